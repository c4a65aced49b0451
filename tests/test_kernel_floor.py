"""The benchmarks' kernel floor records the arithmetic of a call and nothing else."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from benchmarks.kernel_floor import kernel_floor_seconds, kernel_seconds_in_place, record_kernels

aten = torch.ops.aten


def _call() -> torch.Tensor:
    x = torch.randn(1, 32, 16)
    layer = torch.nn.Linear(16, 48)
    out = torch.empty(32, 48)
    torch.addmm(layer.bias, x[0], layer.weight.t(), out=out)  # the Linear.forward_into form
    q, k, v = F.gelu(layer(x), approximate="tanh").unflatten(-1, (3, 2, 8)).unbind(2)
    attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return F.layer_norm(attended, (8,))


def test_records_matmuls_and_attention_in_order_and_skips_element_wise_work() -> None:
    calls = record_kernels(_call)
    assert [call.op for call in calls] == [
        aten.addmm.out,
        aten.addmm.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
    ]
    assert calls[1].args[1].shape == (32, 16) and calls[1].out.shape == (32, 48)
    assert calls[2].args[0].shape == (1, 2, 32, 8)
    assert kernel_floor_seconds(calls, repeats=1) > 0


def test_refuses_inference_mode_where_composite_ops_hide_their_kernels() -> None:
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        record_kernels(_call)


def test_in_place_kernel_time_counts_the_kernels_and_not_the_work_around_them() -> None:
    a, b = torch.randn(64, 64), torch.randn(64, 64)

    def call() -> None:
        time.sleep(0.3)  # work around the kernels: not counted
        torch.mm(a, b)

    assert 0 < kernel_seconds_in_place(call, repeats=1) < 0.15

    def only_kernels() -> None:
        for _ in range(50):
            torch.mm(a, b)

    started = time.perf_counter()
    in_place = kernel_seconds_in_place(only_kernels, repeats=1)
    assert 0 < in_place <= time.perf_counter() - started
