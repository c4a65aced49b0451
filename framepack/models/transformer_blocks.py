"""The layers of the FramePack transformer: embedders, token refiner, double- and single-stream blocks.

Numerics follow FramePack's hunyuan_video_packed.py exactly (tests/test_transformer_parity.py); where weights are fused
(q/k/v, modulation) ``FramePackTransformer.checkpoint_layout`` maps them to the checkpoint.
Blocks update the joint image+context buffer in place (see ``transformer.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import add_residual
from .layers import (
    FeedForward,
    MLPEmbedder,
    Modulation,
    RMSNormWeights,
    Scratch,
    affine_layer_norm,
    attention,
    gelu_tanh_,
    layer_norm,
    linear_into,
    modulate_,
    qk_norm_rope_,
    replicate_pad,
)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.proj(latents).flatten(2).transpose(1, 2)


class CleanLatentEmbedder(nn.Module):
    """Clean history at full (1x), 2x and 4x compression; 2x/4x latents are replicate-padded."""

    KERNELS: ClassVar[dict[str, tuple[int, int, int]]] = {
        "clean": (1, 2, 2), "clean_2x": (2, 4, 4), "clean_4x": (4, 8, 8),
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
        self.up = nn.Linear(in_features, 3 * dim)
        self.down = nn.Linear(3 * dim, dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.up(image_embeds)))


class ConditionEmbedding(nn.Module):
    """``time_text_embed``: timestep, guidance and pooled-text embedders."""

    def __init__(self, dim: int, pooled_dim: int, with_guidance: bool = True) -> None:
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim)
        if with_guidance:
            self.guidance_embedder = MLPEmbedder(256, dim)
        self.text_embedder = MLPEmbedder(pooled_dim, dim)


# --- token refiner -----------------------------------------------------------------------


class _RefinerAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_qkv = nn.Linear(dim, 3 * dim)  # checkpoint: to_q, to_k, to_v
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])


class RefinerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _RefinerAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ff = FeedForward(dim, int(dim * mlp_ratio), activation="silu")
        self.norm_out = Modulation(dim, 2)

    def forward(self, h: torch.Tensor, temb_act: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        normed = affine_layer_norm(self.norm1, h).to(self.attn.to_qkv.weight.dtype)
        q, k, v = self.attn.to_qkv(normed).unflatten(-1, (3, self.heads, -1)).unbind(-3)
        attn_out = self.attn.to_out[0](attention(q, k, v, mask))
        gate_msa, gate_mlp = self.norm_out(temb_act).unbind(1)
        h = add_residual(h, attn_out, gate_msa[:, None])
        return add_residual(h, self.ff(affine_layer_norm(self.norm2, h)), gate_mlp[:, None])


class _RefinerBlocks(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.refiner_blocks = nn.ModuleList([RefinerBlock(dim, heads, mlp_ratio) for _ in range(layers)])


class TokenRefiner(nn.Module):
    """``context_embedder``: projects the text features and refines them, gated by the timestep."""

    def __init__(self, text_dim: int, dim: int, heads: int, layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.time_text_embed = ConditionEmbedding(dim, text_dim, with_guidance=False)
        self.proj_in = nn.Linear(text_dim, dim)
        self.token_refiner = _RefinerBlocks(dim, heads, layers, mlp_ratio)

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        temb_act = F.silu(temb)
        for block in self.token_refiner.refiner_blocks:
            tokens = block(tokens, temb_act, mask)
        return tokens


# --- double- and single-stream blocks ----------------------------------------------------


class _DoubleAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.to_qkv = nn.Linear(dim, 3 * dim)  # checkpoint: to_q, to_k, to_v
        self.add_qkv = nn.Linear(dim, 3 * dim)  # checkpoint: add_q_proj, add_k_proj, add_v_proj
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = nn.Linear(dim, dim)
        self.norm_qk = RMSNormWeights(head_dim)  # checkpoint: norm_q, norm_k
        self.norm_added_qk = RMSNormWeights(head_dim)  # checkpoint: norm_added_q, norm_added_k


class DoubleStreamBlock(nn.Module):
    """Image and context streams with their own weights, joined in one attention.

    ``norm1_joint`` fuses the checkpoint's norm1.linear and norm1_context.linear: 12
    chunks, (shift, scale, gate) x (attention, MLP) x (image, context).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1_joint = Modulation(dim, 12)
        self.attn = _DoubleAttention(dim, head_dim)
        self.ff = FeedForward(dim, mlp_dim, activation="gelu_tanh")
        self.ff_context = FeedForward(dim, mlp_dim, activation="gelu_tanh")

    def modulated_input(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        shift, scale = self.norm1_joint(temb_act)[:, :2].unbind(1)
        return modulate_(layer_norm(x), 1 + scale, shift)

    def forward(
        self,
        joint: torch.Tensor,
        n_img: int,
        temb_act: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        scratch: Scratch,
    ) -> torch.Tensor:
        mod = self.norm1_joint(temb_act).to(joint.dtype)  # float32 modulation under float16 weights
        mod[:, 1::3].add_(1)  # every scale becomes 1 + scale
        shift, scale, gate, shift2, scale2, gate2 = mod[:, :6].unbind(1)
        c_shift, c_scale, c_gate, c_shift2, c_scale2, c_gate2 = mod[:, 6:].unbind(1)
        x, c = joint[:, :n_img], joint[:, n_img:]

        normed = layer_norm(joint)
        qkv = scratch.take((*joint.shape[:2], 3 * joint.shape[2]), self.attn.to_qkv.weight)
        linear_into(qkv[:, :n_img], modulate_(normed[:, :n_img], scale, shift), self.attn.to_qkv)
        linear_into(qkv[:, n_img:], modulate_(normed[:, n_img:], c_scale, c_shift), self.attn.add_qkv)
        qkv = qkv.unflatten(-1, (3, self.heads, -1))  # joint [image | context] q, k, v
        qk_norm_rope_(qkv[:, :, :2], n_img, self.attn.norm_qk.pair(), self.attn.norm_added_qk.pair(), rope)
        attn_out = attention(*qkv.unbind(2), mask)
        # In place into the stream: a float16 update meets a float32 stream in float32 (add_residual's rule).
        x.addcmul_(self.attn.to_out[0](attn_out[:, :n_img]), gate[:, None])
        c.addcmul_(self.attn.to_add_out(attn_out[:, n_img:]), c_gate[:, None])

        normed = layer_norm(joint)
        x.addcmul_(self.ff(modulate_(normed[:, :n_img], scale2, shift2), scratch), gate2[:, None])
        c.addcmul_(self.ff_context(modulate_(normed[:, n_img:], c_scale2, c_shift2), scratch), c_gate2[:, None])
        return joint


class _SingleAttention(nn.Module):
    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.norm_qk = RMSNormWeights(head_dim)  # checkpoint: norm_q, norm_k


class SingleStreamBlock(nn.Module):
    """One stream over image and context tokens; attention and MLP run in parallel.

    ``qkv_mlp`` fuses the checkpoint's to_q, to_k, to_v and proj_mlp. Its output row is
    [q | k | v | mlp]; after attention the attention output overwrites v, so [attn | mlp]
    is already a view that ``proj_out`` reads directly, with no concatenation.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim = dim
        self.norm = Modulation(dim, 3)
        self.qkv_mlp = nn.Linear(dim, 3 * dim + mlp_dim)
        self.attn = _SingleAttention(head_dim)
        self.proj_out = nn.Linear(dim + mlp_dim, dim)

    def modulated_input(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        shift, scale = self.norm(temb_act)[:, :2].unbind(1)
        return modulate_(layer_norm(x), 1 + scale, shift)

    def forward(
        self,
        joint: torch.Tensor,
        n_img: int,
        temb_act: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        scratch: Scratch,
    ) -> torch.Tensor:
        mod = self.norm(temb_act).to(joint.dtype)  # float32 modulation under float16 weights
        mod[:, 1].add_(1)
        shift, scale, gate = mod.unbind(1)
        dim = self.dim
        h = scratch.take((*joint.shape[:2], self.qkv_mlp.out_features), self.qkv_mlp.weight)
        linear_into(h, modulate_(layer_norm(joint), scale, shift), self.qkv_mlp)
        qkv = h[..., : 3 * dim].unflatten(-1, (3, self.heads, -1))
        weights = self.attn.norm_qk.pair()
        qk_norm_rope_(qkv[:, :, :2], n_img, weights, weights, rope)
        gelu_tanh_(h[..., 3 * dim :])
        h[..., 2 * dim : 3 * dim] = attention(*qkv.unbind(2), mask)  # attention output takes v's place
        return joint.addcmul_(self.proj_out(h[..., 2 * dim :]), gate[:, None])
