"""The few CUDA-runtime calls the library makes, in one place.

Everything else the library does on a device is an ordinary tensor op. These calls are
not: they ask the driver about memory, lock host pages, and order work between streams.
Keeping them behind ``DeviceRuntime`` lets ``framepack.dry_run`` stand in for them on a
machine without a GPU (it counts what they would do instead), so every other line of a
CUDA run can be executed and checked on a CPU.

``runtime()`` is the one in force: ``CudaRuntime`` unless a dry run has installed its own
for the current context (``use_runtime``).
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch


class DeviceRuntime:
    """What the library asks of a device runtime. The base class is the CPU's: nothing to do."""

    def is_available(self) -> bool:
        """Whether a CUDA device can be used."""
        return False

    def supports_bf16(self, device: torch.device) -> bool:
        """Whether ``device`` computes bfloat16 natively (emulation on sm < 80 does not count)."""
        return device.type != "cuda"

    def mem_get_info(self, device: torch.device) -> tuple[int, int]:
        """(free, total) bytes of device memory, free including what PyTorch holds cached but unused."""
        raise NotImplementedError(f"{type(self).__name__} has no device memory to report for {device}")

    def pinned_empty(self, nbytes: int) -> torch.Tensor:
        """A host byte buffer of exactly ``nbytes``, page-locked where the runtime can DMA from it."""
        return torch.empty(nbytes, dtype=torch.uint8)

    def new_stream(self, device: torch.device) -> Any:
        """A side stream for copies, or None where copies are synchronous."""
        return None

    def current_stream(self, device: torch.device) -> Any:
        return None

    def use_stream(self, stream: Any) -> AbstractContextManager[Any]:
        """Queue the ops of the block on ``stream``."""
        return nullcontext()

    def record_event(self, stream: Any) -> Any:
        """An event marking the work queued on ``stream`` so far (None where there are no streams)."""
        return None

    def wait_event(self, stream: Any, event: Any) -> None:
        """Make ``stream`` wait for ``event`` without blocking the host."""

    def wait_stream(self, stream: Any, other: Any) -> None:
        """Make ``stream`` wait for everything queued on ``other``."""

    def synchronize_event(self, event: Any) -> None:
        """Block the host until ``event`` has happened (before it rewrites memory a queued copy reads)."""

    def synchronize(self, device: torch.device) -> None:
        """Block the host until the device is idle."""

    def empty_cache(self) -> None:
        """Return cached, unused device memory to the driver (between phases)."""


class CudaRuntime(DeviceRuntime):
    """The real CUDA runtime, through ``torch.cuda``."""

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    def supports_bf16(self, device: torch.device) -> bool:
        if device.type != "cuda":
            return True
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)

    def mem_get_info(self, device: torch.device) -> tuple[int, int]:
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, total

    def pinned_empty(self, nbytes: int) -> torch.Tensor:
        # torch.empty(pin_memory=True) goes through the caching host allocator, which rounds
        # every allocation up to a power of two (a 648 MiB block would lock 1 GiB). Registering
        # an ordinary allocation locks exactly the bytes asked for.
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes == 0 or not torch.cuda.is_available():
            return buffer
        cudart = torch.cuda.cudart()
        pointer = buffer.data_ptr()
        status = cudart.cudaHostRegister(pointer, nbytes, 0)
        if int(status) != 0:
            raise MemoryError(
                f"could not page-lock {nbytes} bytes of host memory (cudaHostRegister error {int(status)})"
            )
        weakref.finalize(buffer.untyped_storage(), cudart.cudaHostUnregister, pointer)
        return buffer

    def new_stream(self, device: torch.device) -> torch.cuda.Stream:
        return torch.cuda.Stream(device)

    def current_stream(self, device: torch.device) -> torch.cuda.Stream:
        return torch.cuda.current_stream(device)

    def use_stream(self, stream: torch.cuda.Stream | None) -> AbstractContextManager[Any]:
        return nullcontext() if stream is None else torch.cuda.stream(stream)

    def record_event(self, stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
        if stream is None:
            return None
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def wait_event(self, stream: torch.cuda.Stream | None, event: torch.cuda.Event | None) -> None:
        if stream is not None and event is not None:
            stream.wait_event(event)

    def wait_stream(self, stream: torch.cuda.Stream | None, other: torch.cuda.Stream | None) -> None:
        if stream is not None and other is not None:
            stream.wait_stream(other)

    def synchronize_event(self, event: torch.cuda.Event | None) -> None:
        if event is not None:
            event.synchronize()

    def synchronize(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def empty_cache(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# One stateless CudaRuntime serves every context that installed no other.
_CURRENT: contextvars.ContextVar[DeviceRuntime] = contextvars.ContextVar("framepack_runtime", default=CudaRuntime())  # noqa: B039


def runtime() -> DeviceRuntime:
    """The runtime in force for the current context."""
    return _CURRENT.get()


@contextmanager
def use_runtime(replacement: DeviceRuntime) -> Iterator[DeviceRuntime]:
    """Make ``replacement`` the runtime for the block (a dry run's stand-in)."""
    token = _CURRENT.set(replacement)
    try:
        yield replacement
    finally:
        _CURRENT.reset(token)
