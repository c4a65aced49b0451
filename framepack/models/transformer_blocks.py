"""The layers of the FramePack transformer: embedders, token refiner, double- and single-stream blocks.

Numerics follow FramePack's hunyuan_video_packed.py exactly (tests/test_transformer_parity.py). Modules are named for what they do; where weights
are renamed or fused (q/k/v, modulation) ``FramePackTransformer.checkpoint_keys`` maps them
to the checkpoint. Blocks update the joint image+context buffer in place (see ``transformer.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import add_residual
from .layers import (
    SINUSOID_DIM,
    FeedForward,
    MLPEmbedder,
    Modulation,
    Scratch,
    affine_layer_norm,
    attention,
    gelu_tanh_,
    layer_norm,
    modulate_,
    qk_norm_rope_,
    qk_norm_weights,
    replicate_pad,
)
from .linear import Linear

# The attention of a block: [B, L, H, hd] q, k, v and a key mask -> [B, L, H*hd]. Single-process
# runs use ``layers.attention``; sequence parallelism (framepack.distributed) passes its own.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.proj(latents).flatten(2).transpose(1, 2)


class CleanLatentEmbedder(nn.Module):
    """Clean history at full (1x), 2x and 4x compression; 2x/4x latents are replicate-padded."""

    KERNELS: ClassVar[dict[str, tuple[int, int, int]]] = {
        "clean": (1, 2, 2),
        "clean_2x": (2, 4, 4),
        "clean_4x": (4, 8, 8),
    }

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_channels, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_channels, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, group: str, latents: torch.Tensor) -> torch.Tensor:
        kernel = self.KERNELS[group]
        conv = {"clean": self.proj, "clean_2x": self.proj_2x, "clean_4x": self.proj_4x}[group]
        return conv(replicate_pad(latents, kernel)).flatten(2).transpose(1, 2)


class ImageProjection(nn.Module):
    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.up = Linear(in_features, 3 * dim)
        self.down = Linear(3 * dim, dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.up(image_embeds)))


# --- token refiner -----------------------------------------------------------------------


class RefinerBlock(nn.Module):
    """Self-attention and MLP over the text tokens, each gated by the timestep."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = Linear(dim, 3 * dim)
        self.attn_out = Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), activation="silu")
        self.gates = Modulation(dim, 2)  # the attention and MLP gates

    def forward(self, h: torch.Tensor, temb_act: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        normed = affine_layer_norm(self.attn_norm, h).to(self.qkv.compute_dtype)
        q, k, v = self.qkv(normed).unflatten(-1, (3, self.heads, -1)).unbind(-3)
        attn_out = self.attn_out(attention(q, k, v, mask))
        gate_msa, gate_mlp = self.gates(temb_act).unbind(1)
        h = add_residual(h, attn_out, gate_msa[:, None])
        return add_residual(h, self.mlp(affine_layer_norm(self.mlp_norm, h)), gate_mlp[:, None])


class TokenRefiner(nn.Module):
    """Projects the text features and refines them, gated by the timestep and the pooled text.

    ``proj_in`` and the two embedders run once per section (``FramePackTransformer.prepare``
    and ``denoise`` call them); ``forward`` runs the refiner blocks.
    """

    def __init__(self, text_dim: int, dim: int, heads: int, layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.timestep_embed = MLPEmbedder(SINUSOID_DIM, dim)
        self.pooled_text_embed = MLPEmbedder(text_dim, dim)  # embeds the masked mean of the text
        self.proj_in = Linear(text_dim, dim)
        self.blocks = nn.ModuleList([RefinerBlock(dim, heads, mlp_ratio) for _ in range(layers)])

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        temb_act = F.silu(temb)
        for block in self.blocks:
            tokens = block(tokens, temb_act, mask)
        return tokens


# --- double- and single-stream blocks ----------------------------------------------------


def first_modulated_input(modulation: nn.Module, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
    """A block's first modulated input, LN(x)·(1+scale)+shift: what a cache policy may compare."""
    shift, scale = modulation(temb_act)[:, :2].unbind(1)
    return modulate_(layer_norm(x), 1 + scale, shift)


class DoubleStreamBlock(nn.Module):
    """Image and context streams with their own weights, joined in one attention.

    ``modulation`` fuses the image and context streams' modulations: 12 chunks,
    (shift, scale, gate) x (attention, MLP) x (image, context).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.modulation = Modulation(dim, 12)
        self.image_qkv = Linear(dim, 3 * dim)
        self.context_qkv = Linear(dim, 3 * dim)
        self.image_qk_norm = qk_norm_weights(head_dim)
        self.context_qk_norm = qk_norm_weights(head_dim)
        self.image_attn_out = Linear(dim, dim)
        self.context_attn_out = Linear(dim, dim)
        self.image_mlp = FeedForward(dim, mlp_dim, activation="gelu_tanh")
        self.context_mlp = FeedForward(dim, mlp_dim, activation="gelu_tanh")

    def modulated_input(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        return first_modulated_input(self.modulation, x, temb_act)

    def forward(
        self,
        joint: torch.Tensor,
        n_img: int,
        temb_act: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        scratch: Scratch,
        attend: Attend = attention,
    ) -> torch.Tensor:
        mod = self.modulation(temb_act).to(joint.dtype)  # float32 modulation under float16 weights
        mod[:, 1::3].add_(1)  # every scale becomes 1 + scale
        shift, scale, gate, shift2, scale2, gate2 = mod[:, :6].unbind(1)
        c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = mod[:, 6:].unbind(1)
        x, c = joint[:, :n_img], joint[:, n_img:]

        normed = layer_norm(joint)
        qkv = scratch.take_output((*joint.shape[:2], 3 * joint.shape[2]), self.image_qkv)
        self.image_qkv.forward_into(qkv[:, :n_img], modulate_(normed[:, :n_img], scale, shift))
        self.context_qkv.forward_into(qkv[:, n_img:], modulate_(normed[:, n_img:], c_scale, c_shift))
        qkv = qkv.unflatten(-1, (3, self.heads, -1))  # joint [image | context] q, k, v
        image_weights, context_weights = self.image_qk_norm.view(2, 1, -1), self.context_qk_norm.view(2, 1, -1)
        qk_norm_rope_(qkv[:, :, :2], n_img, image_weights, context_weights, rope)
        attn_out = attend(*qkv.unbind(2), mask)
        # In place into the stream: a float16 update meets a float32 stream in float32 (add_residual's rule).
        x.addcmul_(self.image_attn_out(attn_out[:, :n_img]), gate[:, None])
        c.addcmul_(self.context_attn_out(attn_out[:, n_img:]), c_gate[:, None])

        normed = layer_norm(joint)
        x.addcmul_(self.image_mlp(modulate_(normed[:, :n_img], scale2, shift2), scratch), gate2[:, None])
        c.addcmul_(self.context_mlp(modulate_(normed[:, n_img:], c_scale2, c_shift2), scratch), c_gate2[:, None])
        return joint


class SingleStreamBlock(nn.Module):
    """One stream over image and context tokens; attention and MLP run in parallel.

    ``qkv_mlp`` fuses the q, k, v and MLP-in projections. Its output row is
    [q | k | v | mlp]; after attention the attention output overwrites v, so [attn | mlp]
    is already a view that ``proj_out`` reads directly, with no concatenation.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim = dim
        self.modulation = Modulation(dim, 3)
        self.qkv_mlp = Linear(dim, 3 * dim + mlp_dim)
        self.qk_norm = qk_norm_weights(head_dim)
        self.proj_out = Linear(dim + mlp_dim, dim)

    def modulated_input(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        return first_modulated_input(self.modulation, x, temb_act)

    def forward(
        self,
        joint: torch.Tensor,
        n_img: int,
        temb_act: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        scratch: Scratch,
        attend: Attend = attention,
    ) -> torch.Tensor:
        mod = self.modulation(temb_act).to(joint.dtype)  # float32 modulation under float16 weights
        mod[:, 1].add_(1)
        shift, scale, gate = mod.unbind(1)
        dim = self.dim
        h = scratch.take_output((*joint.shape[:2], self.qkv_mlp.out_features), self.qkv_mlp)
        self.qkv_mlp.forward_into(h, modulate_(layer_norm(joint), scale, shift))
        qkv = h[..., : 3 * dim].unflatten(-1, (3, self.heads, -1))
        weights = self.qk_norm.view(2, 1, -1)
        qk_norm_rope_(qkv[:, :, :2], n_img, weights, weights, rope)
        gelu_tanh_(h[..., 3 * dim :])
        h[..., 2 * dim : 3 * dim] = attend(*qkv.unbind(2), mask)  # attention output takes v's place
        return joint.addcmul_(self.proj_out(h[..., 2 * dim :]), gate[:, None])
