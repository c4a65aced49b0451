"""The seven parts of a FramePack pipeline, loaded from the official repos or built tiny."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, fields

import torch
from torch import nn

from .models.clip import CLIPTextConfig, CLIPTextEncoder
from .models.llama import LlamaConfig, LlamaTextEncoder
from .models.loading import Storage, Weights
from .models.siglip import SiglipImageEncoder, SiglipVisionConfig
from .models.tokenizers import CLIPTokenizer, LlamaTokenizer
from .models.transformer import FramePackTransformer, TransformerConfig
from .models.vae import HunyuanVideoVAE, VAEConfig
from .precision import default_dtype
from .tiny import tiny_clip_tokenizer, tiny_llama_tokenizer

I2V_REPO = "lllyasviel/FramePackI2V_HY"
F1_REPO = "lllyasviel/FramePack_F1_I2V_HY_20250503"
HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"
REDUX_REPO = "lllyasviel/flux_redux_bfl"

WEIGHT_SAMPLES = 64  # elements of each weight tensor that ``Components.weights_digest`` reads


@dataclass
class Components:
    """Every model and tokenizer a generation needs."""

    transformer: FramePackTransformer
    vae: HunyuanVideoVAE
    text_encoder: LlamaTextEncoder
    text_encoder_2: CLIPTextEncoder
    image_encoder: SiglipImageEncoder
    tokenizer: LlamaTokenizer
    tokenizer_2: CLIPTokenizer

    def modules(self) -> dict[str, nn.Module]:
        """The neural networks by name (tokenizers excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), nn.Module)}

    def weights_digest(self) -> str:
        """A short sha256 of every module's weights: for each parameter and buffer its name,
        dtype, shape and about ``WEIGHT_SAMPLES`` elements at a fixed stride (the last included).

        Two checkpoints of one architecture differ almost everywhere, so the samples tell them
        apart; an edit between the sampled elements goes unseen. Where weights live (device,
        host, memory-mapped) does not change it. Cost: a few small ops per tensor and one copy
        to the host per module and device; memory-mapped weights read the pages holding the samples.
        """
        h = hashlib.sha256()
        for module_name, module in self.modules().items():
            tensors = [*module.named_parameters(), *module.named_buffers()]
            samples = _to_host([_sample(tensor.detach()) for _, tensor in tensors])
            for (name, tensor), sample in zip(tensors, samples):
                h.update(f"{module_name}.{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
                if type(sample) is torch.Tensor:  # fake weights (framepack.dry_run) have shapes, no values
                    h.update(sample.numpy().tobytes())
        return h.hexdigest()[:32]


def _sample(tensor: torch.Tensor) -> torch.Tensor:
    """About ``WEIGHT_SAMPLES`` elements of ``tensor`` at a fixed stride, plus its last, as bytes."""
    flat = tensor.reshape(-1)
    stride = max(1, -(-flat.numel() // WEIGHT_SAMPLES))
    return torch.cat([flat[::stride], flat[-1:]]).view(torch.uint8)


def _to_host(samples: list[torch.Tensor]) -> list[torch.Tensor]:
    """``samples`` on the host, in order: those of each device gathered into one copy."""
    out = list(samples)
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        if sample.device.type != "cpu":
            by_device[sample.device].append(i)
    for indices in by_device.values():
        gathered = torch.cat([samples[i] for i in indices]).cpu()
        for i, part in zip(indices, gathered.split([samples[i].numel() for i in indices])):
            out[i] = part
    return out


def component_dtypes(device: torch.device, dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """(transformer dtype, encoders and VAE dtype).

    The transformer computes in ``dtype``, else ``precision.default_dtype(device)``. The
    encoders and the VAE follow it, except that on an accelerator a 16-bit transformer gets
    them in float16, as the reference loads them.
    """
    main = dtype or default_dtype(device)
    half = device.type != "cpu" and main in (torch.bfloat16, torch.float16)
    return main, torch.float16 if half else main


def load_components(
    *,
    transformer: str | os.PathLike[str] = I2V_REPO,
    hunyuan: str | os.PathLike[str] = HUNYUAN_REPO,
    redux: str | os.PathLike[str] = REDUX_REPO,
    device: torch.device,
    dtype: torch.dtype | None = None,
    storage: Storage = "copy",
    load_device: torch.device | None = None,
    weights: Weights = None,
) -> Components:
    """Load every component; ``hunyuan`` and ``redux`` are repos (or folders) with the subfolders
    of ``hunyuanvideo-community/HunyuanVideo`` and ``lllyasviel/flux_redux_bfl``.

    ``load_device`` is where weights land (the host when the pipeline will swap or stream them).
    ``weights="fp8"`` stores the transformer's block Linears in fp8 (``FramePackTransformer.from_pretrained``).
    """
    main_dtype, side_dtype = component_dtypes(device, dtype)
    where = load_device or device
    common = dict(device=where, storage=storage)
    return Components(
        transformer=FramePackTransformer.from_pretrained(transformer, dtype=main_dtype, weights=weights, **common),
        vae=HunyuanVideoVAE.from_pretrained(hunyuan, subfolder="vae", dtype=side_dtype, **common),
        text_encoder=LlamaTextEncoder.from_pretrained(hunyuan, subfolder="text_encoder", dtype=side_dtype, **common),
        text_encoder_2=CLIPTextEncoder.from_pretrained(hunyuan, subfolder="text_encoder_2", dtype=side_dtype, **common),
        image_encoder=SiglipImageEncoder.from_pretrained(redux, subfolder="image_encoder", dtype=side_dtype, **common),
        tokenizer=LlamaTokenizer.from_pretrained(hunyuan, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(hunyuan, subfolder="tokenizer_2"),
    )


def tiny_components(seed: int = 0, *, device: torch.device | str = "cpu") -> Components:
    """Every component built from tiny random configs: the offline demo and test fixture.

    Initialisation draws from a private RNG state, so building one leaves the caller's
    global torch RNG untouched.
    """
    llama_config = LlamaConfig.preset("tiny")
    clip_config = CLIPTextConfig.preset("tiny")
    siglip_config = SiglipVisionConfig.preset("tiny")
    transformer_config = TransformerConfig.preset(
        "tiny",
        text_embed_dim=llama_config.hidden_size,
        pooled_projection_dim=clip_config.hidden_size,
        image_proj_dim=siglip_config.hidden_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = dict(
            transformer=FramePackTransformer(transformer_config),
            vae=HunyuanVideoVAE(VAEConfig.preset("tiny")),
            text_encoder=LlamaTextEncoder(llama_config),
            text_encoder_2=CLIPTextEncoder(clip_config),
            image_encoder=SiglipImageEncoder(siglip_config),
        )
    for model in models.values():
        model.to(device).eval().requires_grad_(False)
    return Components(**models, tokenizer=tiny_llama_tokenizer(), tokenizer_2=tiny_clip_tokenizer())
