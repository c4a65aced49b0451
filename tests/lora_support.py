"""LoRA files written by hand in each format in circulation, and the merge they stand for.

Independent of framepack.lora: the key names are spelled here as the producers spell
them (musubi-tuner, kohya, diffusion-pipe, diffusers/PEFT), and ``merge`` adds
strength * scale * (up @ down) to the diffusers checkpoint's weights by hand, splitting
the up rows of an original fused layer (img_attn_qkv: q | k | v; linear1: q | k | v | mlp).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from framepack.models.loading import to_checkpoint_state_dict
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.transformer_support import randomise_

CONFIG = TransformerConfig.preset("tiny")
D, M = CONFIG.inner_dim, CONFIG.mlp_dim

# diffusers layer (block-relative) -> (in, out)
DOUBLE = {
    "attn.to_q": (D, D),
    "attn.to_k": (D, D),
    "attn.to_v": (D, D),
    "attn.add_q_proj": (D, D),
    "attn.add_k_proj": (D, D),
    "attn.add_v_proj": (D, D),
    "attn.to_out.0": (D, D),
    "attn.to_add_out": (D, D),
    "ff.net.0.proj": (D, M),
    "ff.net.2": (M, D),
    "ff_context.net.0.proj": (D, M),
    "ff_context.net.2": (M, D),
    "norm1.linear": (D, 6 * D),
    "norm1_context.linear": (D, 6 * D),
}
SINGLE = {
    "attn.to_q": (D, D),
    "attn.to_k": (D, D),
    "attn.to_v": (D, D),
    "proj_mlp": (D, M),
    "proj_out": (D + M, D),
    "norm.linear": (D, 3 * D),
}
# original layer (block-relative) -> the diffusers layers its rows split into, with their row counts
ORIGINAL_DOUBLE = {
    "img_attn_qkv": [("attn.to_q", D), ("attn.to_k", D), ("attn.to_v", D)],
    "txt_attn_qkv": [("attn.add_q_proj", D), ("attn.add_k_proj", D), ("attn.add_v_proj", D)],
    "img_attn_proj": [("attn.to_out.0", D)],
    "txt_attn_proj": [("attn.to_add_out", D)],
    "img_mlp.fc1": [("ff.net.0.proj", M)],
    "img_mlp.fc2": [("ff.net.2", D)],
    "txt_mlp.fc1": [("ff_context.net.0.proj", M)],
    "txt_mlp.fc2": [("ff_context.net.2", D)],
    "img_mod.linear": [("norm1.linear", 6 * D)],
    "txt_mod.linear": [("norm1_context.linear", 6 * D)],
}
ORIGINAL_SINGLE = {
    "linear1": [("attn.to_q", D), ("attn.to_k", D), ("attn.to_v", D), ("proj_mlp", M)],
    "linear2": [("proj_out", D)],
    "modulation.linear": [("norm.linear", 3 * D)],
}
ORIGINAL_IN = {"img_mlp.fc2": M, "txt_mlp.fc2": M, "linear2": D + M}

# The layers each file adapts: some blocks only (a LoRA touching part of the model is fine).
DIFFUSERS_LAYERS = [
    *(f"transformer_blocks.0.{n}" for n in DOUBLE),
    *(f"single_transformer_blocks.1.{n}" for n in SINGLE),
    "context_embedder.token_refiner.refiner_blocks.0.attn.to_k",  # outside the blocks too
    "proj_out",
]
ORIGINAL_LAYERS = [
    *(f"double_blocks.1.{n}" for n in ORIGINAL_DOUBLE),
    *(f"single_blocks.0.{n}" for n in ORIGINAL_SINGLE),
]
EXTRA_DIFFUSERS = {
    "context_embedder.token_refiner.refiner_blocks.0.attn.to_k": (D, D),
    "proj_out": (D, 2 * 2 * CONFIG.out_channels),
}

# format -> (layer names used, key of down, key of up, key of alpha or None)
FORMATS = {
    "musubi-framepack": (
        "diffusers",
        lambda n: "lora_unet_" + n.replace(".", "_") + ".lora_down.weight",
        lambda n: "lora_unet_" + n.replace(".", "_") + ".lora_up.weight",
        lambda n: "lora_unet_" + n.replace(".", "_") + ".alpha",
    ),
    "kohya-hunyuanvideo": (
        "original",
        lambda n: "lora_unet_" + n.replace(".", "_") + ".lora_down.weight",
        lambda n: "lora_unet_" + n.replace(".", "_") + ".lora_up.weight",
        lambda n: "lora_unet_" + n.replace(".", "_") + ".alpha",
    ),
    "diffusion-pipe": (
        "original",
        lambda n: f"diffusion_model.{n}.lora_A.weight",
        lambda n: f"diffusion_model.{n}.lora_B.weight",
        None,
    ),
    "diffusion-pipe-down-up": (
        "original",
        lambda n: f"diffusion_model.{n}.lora_down.weight",
        lambda n: f"diffusion_model.{n}.lora_up.weight",
        None,
    ),
    "diffusion-pipe-transformer-prefix": (
        "original",
        lambda n: f"transformer.{n}.lora_A.weight",
        lambda n: f"transformer.{n}.lora_B.weight",
        None,
    ),
    "diffusers": (
        "diffusers",
        lambda n: f"transformer.{n}.lora_A.weight",
        lambda n: f"transformer.{n}.lora_B.weight",
        None,
    ),
    "diffusers-alpha": (
        "diffusers",
        lambda n: f"transformer.{n}.lora_A.weight",
        lambda n: f"transformer.{n}.lora_B.weight",
        lambda n: f"transformer.{n}.alpha",
    ),
}


def layer_shape(name: str) -> tuple[int, int]:
    """(in, out) of a diffusers or original layer of the tiny config."""
    if name in EXTRA_DIFFUSERS:
        return EXTRA_DIFFUSERS[name]
    kind, _, rest = name.partition(".")
    rest = rest.partition(".")[2]
    if kind == "transformer_blocks":
        return DOUBLE[rest]
    if kind == "single_transformer_blocks":
        return SINGLE[rest]
    parts = (ORIGINAL_DOUBLE if kind == "double_blocks" else ORIGINAL_SINGLE)[rest]
    return ORIGINAL_IN.get(rest, D), sum(rows for _, rows in parts)


def diffusers_parts(name: str) -> list[tuple[str, int]]:
    """The diffusers layers (full names) a layer's up rows split into."""
    kind, _, rest = name.partition(".")
    index, _, rest = rest.partition(".")
    if kind == "double_blocks":
        return [(f"transformer_blocks.{index}.{p}", rows) for p, rows in ORIGINAL_DOUBLE[rest]]
    if kind == "single_blocks":
        return [(f"single_transformer_blocks.{index}.{p}", rows) for p, rows in ORIGINAL_SINGLE[rest]]
    return [(name, layer_shape(name)[1])]


Delta = list[tuple[str, torch.Tensor]]  # (diffusers layer, scale * up @ down on its rows)


def write_lora(fmt: str, rank: int = 4, seed: int = 0) -> tuple[dict[str, torch.Tensor], Delta]:
    """A random LoRA in ``fmt``, and its update per diffusers layer (strength 1)."""
    naming, down_key, up_key, alpha_key = FORMATS[fmt]
    layers = DIFFUSERS_LAYERS if naming == "diffusers" else ORIGINAL_LAYERS
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    deltas: Delta = []
    for name in layers:
        fan_in, rows = layer_shape(name)
        down = torch.randn(rank, fan_in, generator=g) / fan_in**0.5
        up = torch.randn(rows, rank, generator=g) * 0.3
        tensors[down_key(name)], tensors[up_key(name)] = down, up
        scale = 1.0
        if alpha_key is not None:
            alpha = float(torch.randint(1, 2 * rank, (), generator=g))
            tensors[alpha_key(name)] = torch.tensor(alpha)
            scale = alpha / rank
        start = 0
        for part, part_rows in diffusers_parts(name):
            deltas.append((part, scale * up[start : start + part_rows].double() @ down.double()))
            start += part_rows
        assert start == rows
    return tensors, deltas


def save_lora(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def merge(checkpoint: dict[str, torch.Tensor], *loras: tuple[float, Delta]) -> dict[str, torch.Tensor]:
    """The checkpoint with strength * delta added to each named weight (in float64, stored float32)."""
    merged = {k: v.clone() for k, v in checkpoint.items()}
    for strength, deltas in loras:
        for layer, delta in deltas:
            key = layer + ".weight"
            merged[key] = (merged[key].double() + strength * delta).float()
    return merged


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config: TransformerConfig = CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "diffusion_pytorch_model.safetensors")
    return folder


def random_checkpoint(seed: int = 5) -> dict[str, torch.Tensor]:
    """A tiny random transformer's tensors under the checkpoint's (diffusers) names."""
    with torch.device("cpu"):
        model = FramePackTransformer(CONFIG).eval()
    randomise_(model, seed)
    return {k: v.detach().clone() for k, v in to_checkpoint_state_dict(model).items()}
