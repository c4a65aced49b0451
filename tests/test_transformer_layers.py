"""The transformer's CPU fast paths: GELU as x * sigmoid(2u), and the per-call scratch buffer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from framepack.models.layers import Scratch, gelu_tanh_


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
    like = torch.empty(0)
    scratch = Scratch()
    first = scratch.take((4, 10), like)
    smaller = scratch.take((2, 3, 5), like)
    assert smaller.shape == (2, 3, 5) and smaller.data_ptr() == first.data_ptr()
    larger = scratch.take((8, 10), like)
    assert larger.shape == (8, 10) and larger.numel() == 80
    assert scratch.take((8, 10), like).data_ptr() == larger.data_ptr()
    other_dtype = scratch.take((8, 10), like.to(torch.float64))
    assert other_dtype.dtype == torch.float64
