"""Writers of the single-file layouts users have, by hand from the facts of the formats (the
tables of framepack/models/single_file.py and vae_ldm.py), not with the code under test; and
of a tiny ComfyUI models folder and of the native repos of the same components."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from framepack.components import Components
from framepack.models.loading import PretrainedModel, to_checkpoint_state_dict


def checkpoint_tensors(model: PretrainedModel) -> dict[str, torch.Tensor]:
    """The native (diffusers / transformers) checkpoint of ``model``."""
    return {k: v.detach().contiguous().clone() for k, v in to_checkpoint_state_dict(model).items()}


def kijai_fp8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kijai's fp8 file: block Linear weights in float8_e4m3fn; norms, biases and the rest as they were."""
    blocks = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.")
    return {
        k: v.to(torch.float8_e4m3fn)
        if blocks.match(k) and k.endswith(".weight") and v.ndim == 2 and "norm" not in k
        else v
        for k, v in tensors.items()
    }


LDM_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out", "group_norm": "norm"}


def ldm_key(key: str, levels: int) -> str:
    """A diffusers HunyuanVideo VAE key in ComfyUI's LDM names, rewritten segment by segment."""
    head, *rest = key.split(".")
    out = [head]
    if rest[0] == "down_blocks":  # down_blocks.i.resnets.j / down_blocks.i.downsamplers.0
        out += ["down", rest[1], *(["block", rest[3]] if rest[2] == "resnets" else ["downsample"])]
        rest = rest[4:]
    elif rest[0] == "up_blocks":  # LDM lists the decoder levels the other way round
        level = str(levels - 1 - int(rest[1]))
        out += ["up", level, *(["block", rest[3]] if rest[2] == "resnets" else ["upsample"])]
        rest = rest[4:]
    elif rest[0] == "mid_block" and rest[1] == "resnets":
        out += ["mid", f"block_{int(rest[2]) + 1}"]
        rest = rest[3:]
    elif rest[0] == "mid_block":  # attentions.0.<projection>[.0]
        out += ["mid", "attn_1", LDM_ATTENTION[rest[3]]]
        rest = rest[5:] if rest[3] == "to_out" else rest[4:]
    elif rest[0] == "conv_norm_out":
        out.append("norm_out")
        rest = rest[1:]
    return ".".join(out + ["nin_shortcut" if r == "conv_shortcut" else r for r in rest])


def comfy_org_vae(tensors: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        name = ldm_key(key, levels)
        if re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", name):
            value = value[:, :, None, None, None].contiguous()  # stored as 1x1x1 Conv3d weights
        out[name] = value
    return out


def llava_llama3(tensors: dict[str, torch.Tensor], vocab: int, hidden: int) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM: the model under "model.", an output head, and (some repackages) the tokenizer."""
    foreign = {f"model.{k}": v for k, v in tensors.items()}
    foreign["lm_head.weight"] = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0))
    foreign["tokenizer"] = torch.arange(64, dtype=torch.uint8)
    return foreign


def write_tokenizers(folder: Path, components: Components) -> Path:
    """HunyuanVideo's tokenizer/ and tokenizer_2/ files for the components' (tiny) tokenizers."""
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "tokenizer.json").write_text(components.tokenizer.tokenizer.to_str())
    (folder / "tokenizer_2").mkdir()
    (folder / "tokenizer_2" / "vocab.json").write_text(json.dumps(components.tokenizer_2.tokenizer.get_vocab()))
    (folder / "tokenizer_2" / "merges.txt").write_text("#version: 0.2\n")
    return folder


def write_native(folder: Path, model: PretrainedModel) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file(checkpoint_tensors(model), folder / f"{model.weights_name}.safetensors")


def write_native_repos(root: Path, components: Components) -> dict[str, Path]:
    """The official repos' layout: transformer repo, HunyuanVideo (encoders, VAE, tokenizers), flux_redux_bfl."""
    write_native(root / "transformer", components.transformer)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        write_native(root / "hunyuan" / name, getattr(components, name))
    write_tokenizers(root / "hunyuan", components)
    write_native(root / "redux" / "image_encoder", components.image_encoder)
    return {"transformer": root / "transformer", "hunyuan": root / "hunyuan", "redux": root / "redux"}


def write_comfyui_folder(
    root: Path, components: Components, transformer: str = "FramePackI2V_HY_bf16.safetensors"
) -> Path:
    """A ComfyUI models folder: each component as its usual single file, in its usual sub-folder."""
    for folder in ("diffusion_models", "text_encoders", "clip_vision", "vae"):
        (root / folder).mkdir(parents=True)
    save_file(checkpoint_tensors(components.transformer), root / "diffusion_models" / transformer)
    llama = components.text_encoder.config
    save_file(
        llava_llama3(checkpoint_tensors(components.text_encoder), llama.vocab_size, llama.hidden_size),
        root / "text_encoders" / "llava_llama3_fp16.safetensors",
    )
    clip = {f"text_model.{k}": v for k, v in checkpoint_tensors(components.text_encoder_2).items()}
    save_file(clip, root / "text_encoders" / "clip_l.safetensors")
    siglip = {f"vision_model.{k}": v for k, v in checkpoint_tensors(components.image_encoder).items()}
    save_file(siglip, root / "clip_vision" / "sigclip_vision_patch14_384.safetensors")
    levels = len(components.vae.config.block_out_channels)
    save_file(
        comfy_org_vae(checkpoint_tensors(components.vae), levels), root / "vae" / "hunyuan_video_vae_bf16.safetensors"
    )
    return root
