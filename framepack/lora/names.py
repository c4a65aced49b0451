"""The original HunyuanVideo names of the block layers, as the diffusers modules they become.

Tencent's HunyuanVideo (and the kohya/musubi and diffusion-pipe LoRAs trained on it) name
the block layers differently from diffusers, and fuse some that diffusers splits: an
original fused weight is the row concatenation of the diffusers weights listed here, in
this order (img_attn_qkv = to_q | to_k | to_v; single-block linear1 = to_q | to_k | to_v |
proj_mlp). The modulation layers rename one to one.
"""

from __future__ import annotations

# original layer in double_blocks.N -> diffusers layers in transformer_blocks.N, rows in order
DOUBLE_BLOCK_LAYERS: dict[str, tuple[str, ...]] = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
    "img_mod.linear": ("norm1.linear",),
    "txt_mod.linear": ("norm1_context.linear",),
}

# original layer in single_blocks.N -> diffusers layers in single_transformer_blocks.N
SINGLE_BLOCK_LAYERS: dict[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.linear": ("norm.linear",),
}


def original_layer_names(num_double: int, num_single: int) -> dict[str, tuple[str, ...]]:
    """Every original block layer of a model with these block counts -> its diffusers layers."""
    table: dict[str, tuple[str, ...]] = {}
    for n in range(num_double):
        for name, parts in DOUBLE_BLOCK_LAYERS.items():
            table[f"double_blocks.{n}.{name}"] = tuple(f"transformer_blocks.{n}.{p}" for p in parts)
    for n in range(num_single):
        for name, parts in SINGLE_BLOCK_LAYERS.items():
            table[f"single_blocks.{n}.{name}"] = tuple(f"single_transformer_blocks.{n}.{p}" for p in parts)
    return table
