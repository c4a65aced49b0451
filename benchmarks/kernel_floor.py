"""The kernel floor of a call: the time of its matmuls, attentions and convolutions alone.

A transformer step is these kernels plus everything around them (norms, modulation, RoPE,
GELU, residual adds, copies). Two measures of what the step would cost if all the work
around them were free:

* in place (``kernel_seconds_in_place``): each kernel timed where the call runs it, on its
  real inputs with the caches as the call leaves them; the sum is the floor the call's own
  kernels set, and no rearrangement of the work around them can beat it;
* replayed (``kernel_floor_seconds``): the recorded kernels run back to back on fresh
  contiguous inputs. Every input is a separate buffer, so the replay reads them all from
  memory where the real call finds its activations in cache: on a machine whose caches
  matter the replay can take longer than the whole call (seen here: 3.28 s for a 2.47 s
  step), and is then no floor. Kept for the recorded shapes (cost tests) and as a second view.

A speed target below the floor cannot be met without doing less arithmetic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that do the arithmetic of a step; anything else is overhead around them.
_KERNELS = {
    aten.mm.default,
    aten.addmm.default,
    aten.addmm.out,
    aten.bmm.default,
    aten.baddbmm.default,
    aten.convolution.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention.default,  # CUDA's SDPA kernels
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
}
# Replayed into a preallocated output: the floor counts the kernel, not the allocator's page faults.
_OUT_VARIANTS = {aten.mm.default: aten.mm.out, aten.addmm.default: aten.addmm.out, aten.addmm.out: aten.addmm.out}


@dataclass(frozen=True)
class TensorSpec:
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


@dataclass(frozen=True)
class KernelCall:
    op: Any
    args: tuple[Any, ...]  # a TensorSpec for each tensor argument, the value otherwise
    kwargs: dict[str, Any]
    out: TensorSpec | None


class _Recorder(TorchDispatchMode):
    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.calls: list[KernelCall] = []
        self.kernel_seconds = 0.0  # the recorded kernels' own time, each timed in place
        self._sync = sync

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in _KERNELS:
            return func(*args, **kwargs)
        self._sync()
        started = time.perf_counter()
        result = func(*args, **kwargs)
        self._sync()
        self.kernel_seconds += time.perf_counter() - started
        out = kwargs.get("out", result)
        inputs = {k: v for k, v in kwargs.items() if k != "out"}
        self.calls.append(KernelCall(
            func, tuple(_spec(a) for a in args), {k: _spec(v) for k, v in inputs.items()},
            _spec(out) if isinstance(out, torch.Tensor) else None,
        ))  # fmt: skip
        return result


def _spec(value: Any) -> Any:
    return TensorSpec(value.shape, value.dtype, value.device) if isinstance(value, torch.Tensor) else value


def _recorded(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> _Recorder:
    if torch.is_inference_mode_enabled():
        # Under inference mode, linear and attention reach the dispatch mode as composite ops, not kernels.
        raise RuntimeError("record_kernels: call it outside torch.inference_mode() (no_grad is applied)")
    recorder = _Recorder(sync)
    with torch.no_grad(), recorder:
        fn()
    return recorder


def record_kernels(fn: Callable[[], object]) -> list[KernelCall]:
    """The kernel calls ``fn`` makes, in order."""
    return _recorded(fn).calls


def kernel_seconds_in_place(
    fn: Callable[[], object], repeats: int = 5, sync: Callable[[], None] = lambda: None
) -> float:
    """Median over ``repeats`` calls of ``fn`` of the time its kernels take where it runs them
    (``sync`` waits for the device around each kernel: a GPU runs asynchronously)."""
    return statistics.median(_recorded(fn, sync).kernel_seconds for _ in range(repeats))


def _materialise(call: KernelCall, generator: torch.Generator) -> Callable[[], object]:
    def tensor(value: Any) -> Any:
        if not isinstance(value, TensorSpec):
            return value
        if value.dtype == torch.bool:  # an attention mask: every key visible
            return torch.ones(value.shape, dtype=torch.bool, device=value.device)
        return torch.randn(value.shape, generator=generator).to(device=value.device, dtype=value.dtype)

    args = tuple(tensor(a) for a in call.args)
    kwargs = {k: tensor(v) for k, v in call.kwargs.items()}
    out_op = _OUT_VARIANTS.get(call.op)
    if out_op is not None and call.out is not None:
        out = torch.empty(call.out.shape, dtype=call.out.dtype, device=call.out.device)
        return lambda: out_op(*args, **kwargs, out=out)
    return lambda: call.op(*args, **kwargs)


def kernel_floor_seconds(calls: list[KernelCall], repeats: int = 5) -> float:
    """Median seconds to run ``calls`` back to back (after one warm-up pass); on a GPU, until
    the device has finished them."""
    generator = torch.Generator().manual_seed(0)
    runs = [_materialise(call, generator) for call in calls]
    cuda = any(isinstance(a, TensorSpec) and a.device.type == "cuda" for c in calls for a in c.args)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    with torch.no_grad():
        for index in range(repeats + 1):
            sync()
            started = time.perf_counter()
            for run in runs:
                run()
            sync()
            if index:
                times.append(time.perf_counter() - started)
    return statistics.median(times)
