"""Run CUDA code paths on a machine without a GPU: tensors that claim device ``cuda``.

Inside ``CudaDryRun()``:

* a tensor on ``cuda`` is a fake tensor (``torch._subclasses.fake_tensor``): it has a
  shape, a dtype, a device and strides but no values, so every op on it runs as shape
  arithmetic. A real-size model costs no memory and almost no time.
* host tensors stay real: ops whose inputs are all on the host run for real, so the
  host-side work of a run (tokenizers, the noise generator, schedules, the mp4 writer)
  behaves as it would. A copy to the host returns zeros of the right shape and dtype.
* any op that mixes a host tensor with a device tensor, 0-dim host tensors included,
  raises ``DeviceMixError`` naming the op and the operands. Real CUDA accepts some of
  these (a 0-dim CPU scalar as a second operand) and refuses others (as ``self`` of
  ``addcmul``); refusing all of them is the rule a library that runs on every device keeps.
  Explicit copies (``.to``, ``copy_``) are the exception, and are counted.
* the CUDA runtime calls (``framepack.device_runtime``) are answered by ``DryRuntime``,
  which counts what they would do: bytes page-locked, synchronisations, free memory
  reported from a configured card size.

What it measures (``DryRunCounters``): device bytes alive (every new device storage
counted once, released when the last tensor viewing it dies) and their peak, per named
phase; bytes copied host→device and device→host; and host-device synchronisations
(reading a device value on the host, copying to the host, ``synchronize``).

Values read from the device in a dry run are placeholders (``True`` for a bool, 0 for a
number): a dry run follows the path of a finite run with no data-dependent branches, which
is the path whose memory and syncs it is there to count.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

from .device_runtime import DeviceRuntime, use_runtime
from .errors import FramePackError
from .units import GIB

_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default, torch.ops.aten._copy_from.default}


class DeviceMixError(FramePackError):
    """An op received tensors on the host and on the device (an implicit transfer, or a CUDA error)."""


@dataclass
class DryRunCounters:
    """What a dry run counted so far."""

    device_bytes: int = 0  # alive now
    peak_device_bytes: int = 0
    phase_peaks: dict[str, int] = field(default_factory=dict)
    # Peak bytes a phase added to what it found alive at its first allocation (its own weights
    # and activations, not what earlier phases left on the device), the largest over its entries.
    phase_own_peaks: dict[str, int] = field(default_factory=dict)
    host_to_device_bytes: int = 0
    device_to_host_bytes: int = 0
    syncs: int = 0
    sync_reasons: list[str] = field(default_factory=list)
    pinned_bytes: int = 0
    pinned_allocations: list[int] = field(default_factory=list)
    empty_cache_calls: int = 0


class _Stream:
    """Stands in for a CUDA stream or event: ordering is not simulated, only the calls."""


class DryRuntime(DeviceRuntime):
    """The CUDA runtime as a dry run answers it (module docstring)."""

    def __init__(
        self,
        counters: DryRunCounters,
        total_bytes: int,
        bf16: bool,
        fake_mode: FakeTensorMode,
        alive: Callable[[], int],
    ) -> None:
        self.counters = counters
        self.fake_mode = fake_mode
        self.alive = alive  # device bytes held now
        self.total_bytes = total_bytes
        self.bf16 = bf16

    def is_available(self) -> bool:
        return True

    def supports_bf16(self, device: torch.device) -> bool:
        return self.bf16 or device.type != "cuda"

    def mem_get_info(self, device: torch.device) -> tuple[int, int]:
        return max(self.total_bytes - self.alive(), 0), self.total_bytes

    def pinned_empty(self, nbytes: int) -> torch.Tensor:
        """A fake host buffer: a real-size model's pinned copy would not fit this machine."""
        self.counters.pinned_bytes += nbytes
        self.counters.pinned_allocations.append(nbytes)
        with _disable_current_modes():
            meta = torch.empty(nbytes, dtype=torch.uint8, device="meta")
        return FakeTensor(self.fake_mode, meta, torch.device("cpu"))

    def new_stream(self, device: torch.device) -> _Stream:
        return _Stream()

    def current_stream(self, device: torch.device) -> _Stream:
        return _Stream()

    def record_event(self, stream: Any) -> _Stream | None:
        return None if stream is None else _Stream()

    def synchronize(self, device: torch.device) -> None:
        _count_sync(self.counters, "synchronize")

    def empty_cache(self) -> None:
        self.counters.empty_cache_calls += 1


def _count_sync(counters: DryRunCounters, reason: str) -> None:
    counters.syncs += 1
    counters.sync_reasons.append(reason)


def _on_device(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "cuda"


class _DeviceBindings(TorchFunctionMode):
    """Python bindings that a CPU-only build refuses for a ``cuda`` tensor before any dispatch
    mode sees the op (``.to("cuda")`` of a host tensor, indexing, ``torch.tensor(..., device=)``),
    rewritten as the aten ops they stand for, which the dispatch mode then handles."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args and not _on_device(args[0]):
            target = _target_device(func, args, kwargs)
            if target is not None and target.type == "cuda":
                source = args[0]
                dtype = _target_dtype(args, kwargs) or source.dtype
                return torch.ops.aten._to_copy.default(source, dtype=dtype, device=target)
        if func in (torch.tensor, torch.as_tensor) and _is_cuda(kwargs.get("device")):
            host = func(*args, **{**kwargs, "device": "cpu"})
            return torch.ops.aten._to_copy.default(host, device=torch.device(kwargs["device"]))
        if not (args and _on_device(args[0])):
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return _fused_attention(*args, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            target = torch.device("cpu") if func is torch.Tensor.cpu else _target_device(func, args, kwargs)
            dtype = _target_dtype(args, kwargs) or args[0].dtype
            if (target is None or target.type == "cuda") and dtype == args[0].dtype:
                return args[0]
            return torch.ops.aten._to_copy.default(args[0], dtype=dtype, device=target or args[0].device)
        if func is torch.Tensor.__getitem__:
            return _getitem(*args)
        if func is torch.Tensor.__setitem__:
            return _setitem(*args)
        if func is torch.Tensor.copy_:
            return torch.ops.aten.copy_.default(*args, **kwargs)
        if func is torch.Tensor.contiguous:
            layout = kwargs.get("memory_format", args[1] if len(args) > 1 else torch.contiguous_format)
            if args[0].is_contiguous(memory_format=layout):
                return args[0]
            return torch.ops.aten.clone.default(args[0], memory_format=layout)
        if func is torch.Tensor.new_tensor:
            return torch.ops.aten._to_copy.default(
                torch.tensor(args[1]), dtype=kwargs.get("dtype") or args[0].dtype, device=args[0].device
            )
        if func is torch.Tensor.__invert__:
            return torch.ops.aten.bitwise_not.default(args[0])
        if func in _SCALAR_READS:
            return _SCALAR_READS[func](torch.ops.aten._local_scalar_dense.default(args[0]))
        if func is torch.Tensor.tolist:
            return torch.ops.aten._to_copy.default(args[0], device=torch.device("cpu")).tolist()
        return func(*args, **kwargs)


# Reading one device value on the host: the bindings guard the device, the aten op does not.
_SCALAR_READS = {
    torch.Tensor.item: lambda v: v,
    torch.Tensor.__bool__: bool,
    torch.Tensor.__float__: float,
    torch.Tensor.__int__: int,
    torch.Tensor.__index__: int,
}


def _fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, **options: Any
) -> torch.Tensor:
    """SDPA as a GPU runs it: a fused kernel (memory-efficient attention, which takes masks and
    runs on every card from sm50) whose memory is its output, never the [L, L] scores that the
    CPU-only build's fallback would materialise."""
    bias = attn_mask
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~attn_mask, float("-inf"))
    if bias is not None:
        bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return torch.ops.aten._scaled_dot_product_efficient_attention.default(
        q, k, v, bias, False, options.get("dropout_p", 0.0), options.get("is_causal", False), scale=options.get("scale")
    )[0]


def _is_cuda(device: object) -> bool:
    return isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda"


def _tensor_indices(tensor: torch.Tensor, key: object) -> list[torch.Tensor | None] | None:
    """``key`` as aten.index's list when it is (leading full slices then) index tensors, else None."""
    parts = key if isinstance(key, tuple) else (key,)
    if not any(isinstance(p, torch.Tensor) for p in parts):
        return None
    indices: list[torch.Tensor | None] = []
    for part in parts:
        if isinstance(part, torch.Tensor):
            indices.append(part)
        elif part == slice(None):
            indices.append(None)
        else:
            raise NotImplementedError(
                f"dry run: indexing a device tensor with {key!r} (mixed basic and tensor indices)"
            )
    return indices


def _basic_view(tensor: torch.Tensor, key: object) -> torch.Tensor:
    with _disable_current_modes():
        meta = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
        view = meta[key]
    return torch.as_strided(tensor, view.shape, view.stride(), view.storage_offset())


def _getitem(tensor: torch.Tensor, key: object) -> torch.Tensor:
    indices = _tensor_indices(tensor, key)
    if indices is None:
        return _basic_view(tensor, key)
    return torch.ops.aten.index.Tensor(tensor, indices)


def _setitem(tensor: torch.Tensor, key: object, value: object) -> None:
    indices = _tensor_indices(tensor, key)
    if indices is not None:
        if not isinstance(value, torch.Tensor):
            value = torch.full((), value, dtype=tensor.dtype, device=tensor.device)
        torch.ops.aten.index_put_(tensor, indices, value)
        return
    view = _basic_view(tensor, key)
    if isinstance(value, torch.Tensor):
        torch.ops.aten.copy_.default(view, value)
    else:
        torch.ops.aten.fill_.Scalar(view, value)


def _target_device(func: Any, args: tuple, kwargs: dict) -> torch.device | None:
    if func is torch.Tensor.cuda:
        return torch.device("cuda")
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _target_dtype(args: tuple, kwargs: dict) -> torch.dtype | None:
    for value in (*args[1:], kwargs.get("dtype")):
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, torch.Tensor):
            return value.dtype
    return None


class _DeviceAccounting(TorchDispatchMode):
    """Checks devices, counts copies and syncs, and tracks device storages (module docstring)."""

    def __init__(self, counters: DryRunCounters) -> None:
        super().__init__()
        self.counters = counters
        self._live: dict[int, weakref.ref] = {}  # device storages alive, by address
        self.phase: str | None = None
        self.entry_peak = 0
        self.entry_base: int | None = None
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device_kwarg = kwargs.get("device")
        to_device = device_kwarg is not None and torch.device(device_kwarg).type == "cuda"
        if not to_device and not any(isinstance(t, FakeTensor) for t in tensors):
            with _disable_current_modes():  # host-only work runs for real
                return func(*args, **kwargs)
        if not to_device and not any(_on_device(t) for t in tensors):
            return func(*args, **kwargs)  # fake host tensors (a real-size model's host weights)
        if func in _COPIES:
            return self._copy(func, args, kwargs)
        host = [t for t in tensors if not _on_device(t)]
        if host:
            raise DeviceMixError(
                f"{func} mixes device tensors with host tensors "
                + ", ".join(f"{t.device} {t.dtype} {list(t.shape)}" for t in host)
                + ": create the host ones on the device (device=...) or copy them there explicitly"
            )
        if func is torch.ops.aten._local_scalar_dense.default:
            _count_sync(self.counters, f"read of a device {args[0].dtype} value")
            return True if args[0].dtype == torch.bool else 0
        if "out" in kwargs:
            return self._into(func, args, kwargs)
        return self._track(func(*args, **kwargs))

    @staticmethod
    def _into(func: Any, args: tuple, kwargs: dict) -> Any:
        """An ``out=`` op: fake tensors implement it with a Python ``copy_`` that a CPU-only build
        refuses on a device tensor, so compute it as the functional op and copy with aten. The
        temporary is not counted: the real kernel writes into ``out``."""
        out = kwargs.pop("out")
        result = _functional(func)(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return torch.ops.aten.copy_.default(out, result)
        for target, value in zip(out, result):
            torch.ops.aten.copy_.default(target, value)
        return out

    def _copy(self, func: Any, args: tuple, kwargs: dict) -> Any:
        if func is torch.ops.aten._to_copy.default:
            source, target = args[0], torch.device(kwargs.get("device") or args[0].device)
            if _on_device(source) and target.type != "cuda":
                return self._to_host(source, kwargs.get("dtype") or source.dtype)
            if not _on_device(source):
                self.counters.host_to_device_bytes += source.nbytes
                if not isinstance(source, FakeTensor):
                    # Only its shape matters from here on: no values cross into fake tensors.
                    with _disable_current_modes():
                        source = torch.empty_strided(source.shape, source.stride(), dtype=source.dtype, device="meta")
                    source = FakeTensor(self.fake_mode, source, torch.device("cpu"))
                return self._track(func(source, *args[1:], **kwargs))
            return self._track(func(*args, **kwargs))
        destination, source = args[0], args[1]
        if _on_device(destination) and not _on_device(source):
            self.counters.host_to_device_bytes += source.nbytes
            return destination  # the values are fake: nothing to write
        if not _on_device(destination) and _on_device(source):
            self.counters.device_to_host_bytes += source.nbytes
            if not kwargs.get("non_blocking", False) and not (len(args) > 2 and args[2]):
                _count_sync(self.counters, "copy to the host")
            with _disable_current_modes():
                return destination.zero_()
        return func(*args, **kwargs)

    def _to_host(self, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        self.counters.device_to_host_bytes += source.nbytes
        _count_sync(self.counters, "copy to the host")
        with _disable_current_modes():
            return torch.zeros(source.shape, dtype=dtype)

    def _track(self, out: Any) -> Any:
        for t in tree_flatten(out)[0]:
            if _on_device(t):
                self._register(t.untyped_storage())
        return out

    def _register(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata  # the storage's address: unique while it lives, and it leaves _live when it dies
        if key in self._live:
            return
        if self.phase is not None and self.entry_base is None:
            self.entry_base = self.counters.device_bytes  # what the phase found, after what it freed first
        nbytes = storage.nbytes()
        self._live[key] = weakref.ref(storage, _releaser(self._live, self.counters, key, nbytes))
        counters = self.counters
        counters.device_bytes += nbytes
        counters.peak_device_bytes = max(counters.peak_device_bytes, counters.device_bytes)
        if self.phase is not None:
            counters.phase_peaks[self.phase] = max(counters.phase_peaks.get(self.phase, 0), counters.device_bytes)
            self.entry_peak = max(self.entry_peak, counters.device_bytes)

    def alive(self) -> int:
        """The device bytes alive now."""
        return self.counters.device_bytes


def _releaser(
    live: dict[int, weakref.ref], counters: DryRunCounters, key: int, nbytes: int
) -> Callable[[weakref.ref], None]:
    """The callback that forgets a storage and its bytes when it dies.

    A storage's Python object lives exactly as long as the storage (torch keeps it while any
    tensor holds the storage, and frees it with the storage), so a weak reference to it calls
    back at the free itself: every free is counted before the next allocation's peak, as a
    scan of every storage before each allocation would, at no cost per live storage.
    """

    def release(_: weakref.ref) -> None:
        del live[key]
        counters.device_bytes -= nbytes

    return release


def _functional(out_variant: Any) -> Any:
    """The overload of an ``out=`` op that returns a new tensor and takes the same other arguments."""
    packet = out_variant.overloadpacket
    wanted = [a.name for a in out_variant._schema.arguments if not a.is_out]
    for name in packet.overloads():
        overload = getattr(packet, name)
        arguments = overload._schema.arguments
        if not any(a.is_out for a in arguments) and [a.name for a in arguments] == wanted:
            return overload
    raise NotImplementedError(f"dry run: no functional form of {out_variant}")


class CudaDryRun:
    """A context in which ``cuda`` tensors are fake and every CUDA path can run on a CPU.

    ``total_gib`` is the card ``mem_get_info`` reports; ``bf16=False`` makes it a card
    without native bfloat16 (RTX 20xx). Use ``phase(name)`` to record a peak per phase.
    """

    def __init__(self, total_gib: float = 24.0, *, bf16: bool = True) -> None:
        self.counters = DryRunCounters()
        self._accounting = _DeviceAccounting(self.counters)
        self.runtime = DryRuntime(
            self.counters, int(total_gib * GIB), bf16, self._accounting.fake_mode, self._accounting.alive
        )
        self._stack: ExitStack | None = None

    def __enter__(self) -> CudaDryRun:
        stack = ExitStack()
        stack.enter_context(self._accounting.fake_mode)
        stack.enter_context(_DeviceBindings())
        stack.enter_context(self._accounting)
        stack.enter_context(use_runtime(self.runtime))
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stack is not None
        self._stack.__exit__(*exc)
        self._stack = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the peak device bytes alive during the block under ``name``."""
        accounting, counters = self._accounting, self.counters
        outer = accounting.phase, accounting.entry_peak, accounting.entry_base
        start = self.device_bytes()
        accounting.phase, accounting.entry_peak, accounting.entry_base = name, 0, None
        counters.phase_peaks[name] = max(counters.phase_peaks.get(name, 0), start)
        try:
            yield
        finally:
            own = 0 if accounting.entry_base is None else accounting.entry_peak - accounting.entry_base
            counters.phase_own_peaks[name] = max(counters.phase_own_peaks.get(name, 0), own)
            accounting.phase, accounting.entry_peak, accounting.entry_base = (
                outer[0],
                max(outer[1], accounting.entry_peak),
                outer[2],
            )

    @contextmanager
    def pipeline_phases(self, pipeline: Any) -> Iterator[None]:
        """Record a peak under each phase name a ``FramePackPipeline`` enters (text, image, sampling, decode)."""
        planned = pipeline._phase

        @contextmanager
        def phase(name: str) -> Iterator[None]:
            with self.phase(name), planned(name):  # what the phase brings counts as its own
                yield

        pipeline._phase = phase
        try:
            yield
        finally:
            del pipeline._phase

    def device_bytes(self) -> int:
        """Device bytes alive now (storages still referenced by a tensor)."""
        return self._accounting.alive()

    def syncs(self) -> int:
        return self.counters.syncs

    def fake_weights(self, module: torch.nn.Module) -> None:
        """Give a module built on the meta device fake host tensors of the same shapes: a
        real-size model with no memory behind it, to be placed as a loaded one would be."""
        fake_host_weights(module, self._accounting.fake_mode)


def fake_host_weights(module: torch.nn.Module, fake_mode: FakeTensorMode) -> None:
    """Replace every parameter and buffer of ``module`` by a fake host tensor of its shape (tied ones stay tied)."""
    tables = [(m._parameters, True) for m in module.modules()] + [(m._buffers, False) for m in module.modules()]
    done: dict[int, torch.Tensor] = {}
    for table, is_parameter in tables:
        for name, tensor in table.items():
            if tensor is None:
                continue
            if id(tensor) not in done:
                meta = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
                fake = FakeTensor(fake_mode, meta, torch.device("cpu"))
                done[id(tensor)] = torch.nn.Parameter(fake, requires_grad=False) if is_parameter else fake
            table[name] = done[id(tensor)]
