"""Tiny random encoders saved in the real checkpoint layouts by transformers (test-only reference)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

LLAMA_TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=8, vocab_size=128320, rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
)  # fmt: skip
CLIP_TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
    pad_token_id=1, projection_dim=32,
)  # fmt: skip
SIGLIP_TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=384,
    num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
)  # fmt: skip


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every weight random (norm weights near 1 so activations stay sane), nothing left at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.3 * noise / max(1, p.shape[-1]) ** 0.5 if p.ndim > 1 else 0.2 * noise)
    return model.eval()


def save_llama(folder: Path, seed: int = 0):
    from transformers import LlamaConfig, LlamaModel

    model = randomize(LlamaModel(LlamaConfig(**LLAMA_TINY)), seed)
    model.save_pretrained(folder, max_shard_size="5MB")  # sharded with an index, like the real one
    assert (folder / "model.safetensors.index.json").exists()
    return model


def save_clip(folder: Path, seed: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = randomize(CLIPTextModel(CLIPTextConfig(**CLIP_TINY)), seed)
    model.save_pretrained(folder)
    return model


def save_siglip(folder: Path, seed: int = 2):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = randomize(SiglipVisionModel(SiglipVisionConfig(**SIGLIP_TINY)), seed)
    model.save_pretrained(folder)
    return model


def add_prefix(folder: Path, prefix: str) -> None:
    """Rewrite model.safetensors with ``prefix`` on every key, as transformers 4.x saved them."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    assert not any(k.startswith(prefix) for k in tensors)
    save_file({prefix + k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def max_error_ok(ours: torch.Tensor, ref: torch.Tensor) -> tuple[bool, float, float]:
    err = (ours - ref).abs().max().item()
    bound = 1e-5 * max(1.0, ref.abs().max().item())
    return err <= bound, err, bound
