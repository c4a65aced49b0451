"""float16 helpers: overflow detection naming the block, float32 residual stream."""

from __future__ import annotations

import pytest
import torch

from framepack.errors import FramePackError, NumericalError
from framepack.precision import add_residual, check_finite, compute_dtype


def test_finite_tensor_passes_through() -> None:
    x = torch.tensor([1.0, -2.0])
    assert check_finite(x, "block 0") is x


def test_non_finite_values_are_counted_and_located() -> None:
    x = torch.tensor([1.0, float("inf"), -float("inf"), float("nan"), -3.0])
    with pytest.raises(NumericalError, match=r"double block 3: 2 inf and 1 NaN of 5 values .*largest finite magnitude 3") as e:
        check_finite(x, "double block 3")
    assert isinstance(e.value, FramePackError) and "float16" not in str(e.value)


def test_float16_overflow_message_points_at_float32_islands() -> None:
    x = torch.tensor([60000.0, 1.0], dtype=torch.float16) * 2  # 120000 > 65504 -> inf
    with pytest.raises(NumericalError, match="float16 overflows above 65504"):
        check_finite(x, "single block 7")


def test_add_residual_keeps_float32_range() -> None:
    stream = torch.tensor([60000.0, 1.0])
    update = torch.tensor([10000.0, 0.5], dtype=torch.float16)
    gate = torch.tensor([1.0, 2.0], dtype=torch.float16)
    out = add_residual(stream, update, gate)
    assert out.dtype == torch.float32
    assert out.tolist() == [70000.0, 2.0]  # in float16 the first would be inf
    assert add_residual(stream, update).tolist() == [70000.0, 1.5]


def test_cpu_computes_in_float32() -> None:
    assert compute_dtype("cpu") == torch.float32
