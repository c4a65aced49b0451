"""The transformer's CPU fast paths (GELU as x * sigmoid(2u), the per-call scratch buffer) and
q/k RMSNorm + RoPE rotated a chunk of tokens at a time in bfloat16/float16."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from framepack.models import layers
from framepack.models.layers import NORM_EPS, Scratch, gelu_tanh_, qk_norm_rope_


def _inputs(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=g) * 4).to(dtype)  # wide enough to reach both tails


def test_gelu_matches_torch_tanh_gelu_in_place() -> None:
    x = _inputs((3, 700, 96))  # several chunks of rows, the last one partial
    expected = F.gelu(x, approximate="tanh")
    out = gelu_tanh_(x)
    assert out is x
    assert (x - expected).abs().max().item() <= 2e-6
    assert not torch.equal(x, _inputs((3, 700, 96)))  # it really ran in place


def test_gelu_on_a_column_slice_leaves_the_other_columns_alone() -> None:
    # The single block applies it to the MLP columns of its fused [q | k | v | mlp] projection.
    h = _inputs((1, 300, 160))
    original = h.clone()
    gelu_tanh_(h[..., 64:])
    assert torch.equal(h[..., :64], original[..., :64])
    assert (h[..., 64:] - F.gelu(original[..., 64:], approximate="tanh")).abs().max().item() <= 2e-6


def test_gelu_falls_back_to_aten_where_rows_cannot_be_viewed_or_dtype_is_not_float32() -> None:
    permuted = _inputs((4, 6, 8)).permute(1, 0, 2)  # no [N, last] view exists
    expected = F.gelu(permuted, approximate="tanh")
    assert torch.equal(gelu_tanh_(permuted), expected)
    half = _inputs((40, 32), torch.bfloat16)
    assert torch.equal(gelu_tanh_(half.clone()), F.gelu(half, approximate="tanh"))


def test_scratch_reuses_one_buffer_and_grows_only_when_needed() -> None:
    cpu, f32 = torch.device("cpu"), torch.float32
    scratch = Scratch()
    first = scratch.take((4, 10), f32, cpu)
    smaller = scratch.take((2, 3, 5), f32, cpu)
    assert smaller.shape == (2, 3, 5) and smaller.data_ptr() == first.data_ptr()
    larger = scratch.take((8, 10), f32, cpu)
    assert larger.shape == (8, 10) and larger.numel() == 80
    assert scratch.take((8, 10), f32, cpu).data_ptr() == larger.data_ptr()
    other_dtype = scratch.take((8, 10), torch.float64, cpu)
    assert other_dtype.dtype == torch.float64


def qk_norm_rope_at_once(
    qk: torch.Tensor, n_img: int, weight_img: torch.Tensor, weight_ctx: torch.Tensor, rope: torch.Tensor
) -> torch.Tensor:
    """The formula with every image token rotated at once (float32 rotation, as the reference)."""
    qk = qk.clone()
    norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True, dtype=torch.float32)
    qk.mul_(torch.addcmul(torch.tensor(NORM_EPS), norm, norm, value=1 / qk.shape[-1]).rsqrt_())
    qk[:, :n_img].mul_(weight_img.to(qk.dtype))
    qk[:, n_img:].mul_(weight_ctx.to(qk.dtype))
    rotated = torch.view_as_complex(qk[:, :n_img].float().unflatten(-1, (-1, 2))) * rope[:, :, None, None]
    qk[:, :n_img] = torch.view_as_real(rotated).flatten(-2).to(qk.dtype)
    return qk


class LargestFloatTemporary(TorchDispatchMode):
    """Bytes of the largest float32/complex64 tensor an op allocates (views excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.complex64):
                    self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def rope_inputs(dtype: torch.dtype, batch: int = 2, n_img: int = 40, n_ctx: int = 6, heads: int = 2, hd: int = 16):
    g = torch.Generator().manual_seed(5)
    qkv = (torch.randn(batch, n_img + n_ctx, 3, heads, hd, generator=g) * 3).to(dtype)
    weights = [1 + 0.2 * torch.randn(2, 1, hd, generator=g) for _ in range(2)]
    angle = torch.randn(1, n_img, hd // 2, generator=g) * 4
    return qkv, n_img, *weights, torch.polar(torch.ones_like(angle), angle)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_qk_norm_rope_in_token_chunks_equals_the_formula_at_once(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    qkv, n_img, weight_img, weight_ctx, rope = rope_inputs(dtype)
    per_token = 2 * 2 * 2 * 16 * 4  # batch x (q|k) x heads x head dim float32 bytes
    monkeypatch.setattr(layers, "ROPE_CHUNK_BYTES", 6 * per_token)  # 40 tokens: 7 chunks, the last partial
    expected = qk_norm_rope_at_once(qkv[:, :, :2], n_img, weight_img, weight_ctx, rope)
    with LargestFloatTemporary() as temporaries:
        qk_norm_rope_(qkv[:, :, :2], n_img, weight_img, weight_ctx, rope)
    assert torch.equal(qkv[:, :, :2], expected)
    if dtype != torch.float32:  # float32 rotates in place, with no copy at all
        # one chunk's float32 copy; the [B, L, 2, H, 1] float32 norms (1472 bytes here) are smaller
        assert temporaries.largest == 6 * per_token
