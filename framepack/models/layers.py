"""Building blocks of the packed HunyuanVideo transformer: norms, RoPE, embedders, attention.

Modules are named for what they do; ``FramePackTransformer.checkpoint_keys`` maps them to
the checkpoint's names, and where the checkpoint stores separate q/k/v projections we keep
one fused ``Linear`` that loading concatenates from them. Numerics follow the reference (FramePack's hunyuan_video_packed.py):
LayerNorm eps 1e-6, RMSNorm over the head dim with an fp32 reduction, tanh GELU,
interleaved-pair rotary embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear

NORM_EPS = 1e-6
SINUSOID_DIM = 256
GELU_SIGMOID_SCALE = 2 * math.sqrt(2 / math.pi)  # tanh u = 2 sigmoid(2u) - 1
_GELU_CHUNK_ELEMENTS = 1 << 19  # a 2 MiB float32 temporary: stays in cache between the passes
# bfloat16/float16 q|k image tokens are rotated in float32 this many bytes at a time: all at once,
# the float32 copy is ~0.45 GB per block at the 640 bucket (~18k tokens x (q|k) x 3072 x 4 bytes)
ROPE_CHUNK_BYTES = 32 << 20


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over the last dim (every AdaLN norm of the model)."""
    return F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)


def affine_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` computed in ``x``'s dtype: a float32 stream stays float32 under float16 weights."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)


def modulate_(normed: torch.Tensor, scale_plus_one: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """In place: normed * (1 + scale) + shift; [B, D] factors broadcast over tokens."""
    return torch.addcmul(shift[:, None], normed, scale_plus_one[:, None], out=normed)


def timestep_sinusoid(values: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 256] float32: cos then sin of value * 10000^(-j/128) (flip_sin_to_cos)."""
    half = SINUSOID_DIM // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    angles = values.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def gelu_tanh_(x: torch.Tensor) -> torch.Tensor:
    """In place tanh-approximated GELU, 0.5 x (1 + tanh u) with u = sqrt(2/pi) (x + 0.044715 x^3).

    On CPU in float32 it is computed as x * sigmoid(2u), the same function (0.5 (1 + tanh u) =
    sigmoid(2u)), in row chunks: ATen's CPU tanh is about 4x slower than its sigmoid, and the
    GELU of a single block's MLP was ~4 % of a step. It differs from ATen's by float rounding.
    """
    rows = _as_rows(x) if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if rows is None:
        return torch.ops.aten.gelu_(x, approximate="tanh")
    chunk = max(1, _GELU_CHUNK_ELEMENTS // x.shape[-1])
    buffer = x.new_empty(min(chunk, rows.shape[0]), x.shape[-1])
    for start in range(0, rows.shape[0], chunk):
        part = rows[start : start + chunk]
        factor = torch.mul(part, part, out=buffer[: part.shape[0]])
        factor.mul_(0.044715 * GELU_SIGMOID_SCALE).add_(GELU_SIGMOID_SCALE).mul_(part).sigmoid_()
        part.mul_(factor)
    return x


def _as_rows(x: torch.Tensor) -> torch.Tensor | None:
    """A [N, last] view of ``x`` (in place work needs a view), or None where the strides do not allow one."""
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return None


class Scratch:
    """One buffer that the blocks of a call take in turn for their largest temporary.

    A fresh CPU allocation of tens of MiB comes back as new pages, and their faults cost
    about as much as writing it (~7 ms for a single block's [L, 3D + M] projection at
    L = 1529). Reusing one buffer pays that once per call instead of once per block. A taken
    tensor is only valid until the next ``take``.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape``, ``dtype`` and ``device``."""
        numel = math.prod(shape)
        buffer = self._buffer
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            self._buffer = None  # let the old buffer go before the larger one is allocated
            buffer = self._buffer = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)

    def take_output(self, shape: tuple[int, ...], layer: Linear) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` for ``layer``'s output: its compute dtype, its device."""
        return self.take(shape, layer.compute_dtype, layer.weight.device)


class MLPEmbedder(nn.Module):
    """linear_2(silu(linear_1(x))): TimestepEmbedding and PixArtAlphaTextProjection alike."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear_1 = Linear(in_features, out_features)
        self.linear_2 = Linear(out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Modulation(Linear):
    """The shift/scale/gate vectors of an adaptive norm: silu(emb) -> [B, chunks, D].

    Takes ``silu(emb)`` already applied: one step's conditioning vector feeds every block,
    so the activation is computed once per step, not once per block.
    """

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__(dim, chunks * dim)
        self.chunks = chunks

    def forward(self, emb_act: torch.Tensor) -> torch.Tensor:
        return super().forward(emb_act).unflatten(-1, (self.chunks, -1))


def qk_norm_weights(head_dim: int) -> nn.Parameter:
    """The RMSNorm weights of q and k side by side, [2 * hd] (checkpoint: two [hd] tensors).

    ``weights.view(2, 1, -1)`` broadcasts over the (q|k) and head dims of a [B, L, 2, H, hd] tensor.
    """
    return nn.Parameter(torch.ones(2 * head_dim))


class FeedForward(nn.Module):
    """``fc_out(act(fc_in(x)))``: the MLP of every block."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.fc_in = Linear(dim, hidden)
        self.fc_out = Linear(hidden, dim)

    def forward(self, x: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """``x`` in any float dtype; computed in the weights' dtype (a float32 stream meets float16 weights).
        The [.., hidden] activation lives in ``scratch`` when one is given."""
        fc_in = self.fc_in
        if scratch is None:
            h = fc_in(x.to(fc_in.compute_dtype))
        else:
            h = scratch.take_output((*x.shape[:-1], fc_in.out_features), fc_in)
            fc_in.forward_into(h, x)
        if self.activation == "gelu_tanh":
            gelu_tanh_(h)  # in place: no second [L, M] buffer
        else:
            F.silu(h, inplace=True)
        return self.fc_out(h)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, L, H, hd] x3 -> [B, L, H*hd]; ``mask`` is a bool key mask [B, 1, 1, L] or None."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


# --- rotary position embedding ----------------------------------------------------------------


def rope_table(indices: torch.Tensor, height: int, width: int, axes_dim: tuple[int, ...], theta: float) -> torch.Tensor:
    """Angles' cos and sin per token of a (frame, row, column) grid.

    indices [Bi, t] -> [Bi, 2, t, height, width, hd/2] float32 (index 0 = cos, 1 = sin), one
    value per rotated channel pair: the reference repeats every angle for both channels of
    its pair, so half the table carries all of it.
    """
    device = indices.device
    grids = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    frames = indices.to(torch.float32)[:, :, None, None]  # [Bi, t, 1, 1]
    positions = (frames, grids[0][None, None], grids[1][None, None])
    angles = []
    for position, dim in zip(positions, axes_dim):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
        angle = position[..., None] * freqs  # [.., dim/2]
        angles.append(angle.expand(indices.shape[0], indices.shape[1], height, width, dim // 2))
    angle = torch.cat(angles, dim=-1)
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def pool_rope_table(table: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """Average the cos/sin values over kernel cells after replicate-padding (2x/4x clean groups)."""
    batch, _, t, h, w, half = table.shape
    grid = table.permute(0, 1, 5, 2, 3, 4).reshape(batch, 2 * half, t, h, w)
    pooled = F.avg_pool3d(replicate_pad(grid, kernel), kernel, stride=kernel)
    return pooled.reshape(batch, 2, half, *pooled.shape[2:]).permute(0, 1, 3, 4, 5, 2)


def replicate_pad(x: torch.Tensor, multiple: tuple[int, int, int]) -> torch.Tensor:
    """Pad [B, C, T, H, W] at the end of T, H, W (edge values) to multiples of ``multiple``."""
    pads = [(-size) % m for size, m in zip(x.shape[2:], multiple)]
    if not any(pads):
        return x
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")


def rope_as_complex(table: torch.Tensor) -> torch.Tensor:
    """[Bi, 2, L, hd/2] cos/sin -> complex [Bi, L, hd/2]."""
    return torch.complex(table[:, 0], table[:, 1])


def qk_norm_rope_(
    qk: torch.Tensor, n_img: int, weight_img: torch.Tensor, weight_ctx: torch.Tensor, rope: torch.Tensor
) -> None:
    """In place on qk [B, L, 2, H, hd] (q and k side by side): RMSNorm, then RoPE on the image tokens.

    ``weight_img``/``weight_ctx`` [2, 1, hd] are the (q, k) RMSNorm weights of the image
    tokens (the first ``n_img``) and of the context tokens. As the reference: the
    normalisation factor is fp32, the normalised values are cast back before the weight
    multiplies, and the rotation of interleaved pairs (x0, x1) -> (x0 cos - x1 sin,
    x1 cos + x0 sin), a complex multiply by ``rope`` = cos + i sin, runs in fp32
    (for bf16/fp16 ``qk``, on float32 copies of ``ROPE_CHUNK_BYTES`` at most).
    """
    head_dim = qk.shape[-1]
    norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True, dtype=torch.float32)
    eps = norm.new_full((), NORM_EPS)  # on norm's device: CUDA's addcmul refuses a CPU tensor
    inv = torch.addcmul(eps, norm, norm, value=1 / head_dim).rsqrt_()
    qk.mul_(inv)
    image, context = qk[:, :n_img], qk[:, n_img:]
    image.mul_(weight_img.to(qk.dtype))
    if context.shape[1]:
        context.mul_(weight_ctx.to(qk.dtype))
    rope = rope[:, :, None, None]  # broadcast over (q|k) and heads
    if qk.dtype == torch.float32:
        pairs = torch.view_as_complex(image.unflatten(-1, (-1, 2)))
        torch.mul(pairs, rope, out=pairs)
        return
    token_bytes = image.shape[0] * math.prod(image.shape[2:]) * 4
    chunk = max(1, ROPE_CHUNK_BYTES // token_bytes)
    for start in range(0, n_img, chunk):
        part = image[:, start : start + chunk]
        rotated = part.float()
        pairs = torch.view_as_complex(rotated.unflatten(-1, (-1, 2)))
        pairs.mul_(rope[:, start : start + chunk])
        part.copy_(rotated)
