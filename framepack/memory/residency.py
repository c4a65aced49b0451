"""Where a module's weights live, and moving whole components between host and device.

A pipeline uses each large component in one phase only (text encoders to encode the
prompt, the VAE to encode and decode, the transformer to sample). ``ComponentResidency``
puts a component on the device for its phase and back afterwards *without copying it to
the host*: it remembers the host tensors the component was loaded with and points the
module back at them. With ``from_pretrained(..., storage="mmap")`` those host tensors are
views of the checkpoint file, so an unloaded component costs only page cache, which
the OS can reclaim, instead of anonymous RAM.

A component copied to the device phase after phase can instead keep its host tensors in
one exact-size page-locked buffer (``pin_memory=True``), so each upload is asynchronous
DMA; that buffer is locked RAM, no longer page cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..device_runtime import runtime
from ..units import format_bytes
from .host import lockable_bytes

logger = logging.getLogger("framepack")

# Every tensor in a packed buffer starts on this boundary, so views of any dtype are aligned
# (and vectorised kernels see the same alignment as with freshly allocated tensors).
ALIGNMENT = 256


@dataclass(frozen=True)
class ComponentSize:
    """A component's device bytes: ``fixed_bytes`` always whole on the device while in use,
    plus the repeated ``block_bytes`` (packed) a ``LayerStreamer`` may stream."""

    fixed_bytes: int
    block_bytes: tuple[int, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + sum(self.block_bytes)


@dataclass(frozen=True)
class _Place:
    """One (module, attribute) holding a tensor, and that tensor's index among the unique tensors."""

    module: nn.Module
    attr: str
    is_parameter: bool
    tensor: int


class ModuleTensors:
    """A module's parameters and buffers, deduplicated (tied weights stay tied), skipping the
    subtrees in ``exclude`` (e.g. blocks another mechanism manages), with the byte offsets
    they take when packed into one flat buffer (each on an ``ALIGNMENT`` boundary)."""

    def __init__(self, module: nn.Module, exclude: Iterable[nn.Module] = ()) -> None:
        skipped = {id(m) for root in exclude for m in root.modules()}
        self.places: list[_Place] = []
        self.tensors: list[torch.Tensor] = []
        index: dict[int, int] = {}
        for sub in module.modules():
            if id(sub) in skipped:
                continue
            for is_parameter, table in ((True, sub._parameters), (False, sub._buffers)):
                for attr, tensor in table.items():
                    if tensor is None:
                        continue
                    if id(tensor) not in index:
                        index[id(tensor)] = len(self.tensors)
                        self.tensors.append(tensor)
                    self.places.append(_Place(sub, attr, is_parameter, index[id(tensor)]))
        self.offsets: list[int] = []
        offset = 0
        for tensor in self.tensors:
            self.offsets.append(offset)
            offset += -(-tensor.nbytes // ALIGNMENT) * ALIGNMENT
        self.packed_nbytes = offset

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def assign(self, tensors: Sequence[torch.Tensor]) -> None:
        """Point the module at ``tensors`` (same order as ``self.tensors``), as assign-loading does.
        Each tensor is wrapped once, so tied weights stay one parameter."""
        kinds = {place.tensor: place.is_parameter for place in self.places}
        self.tensors = [nn.Parameter(t, requires_grad=False) if kinds[j] else t for j, t in enumerate(tensors)]
        for place in self.places:
            table = place.module._parameters if place.is_parameter else place.module._buffers
            table[place.attr] = self.tensors[place.tensor]

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """The tensors laid out in a flat byte ``buffer`` (no copy)."""
        return [
            buffer[offset : offset + t.nbytes].view(t.dtype).view(t.shape)
            for t, offset in zip(self.tensors, self.offsets)
        ]

    def pin(self) -> torch.Tensor:
        """Copy the tensors into one page-locked buffer of exactly ``packed_nbytes``, laid out
        like ``views``, and point the module at the copies. Returns the buffer."""
        buffer = runtime().pinned_empty(self.packed_nbytes)
        views = self.views(buffer)
        for view, source in zip(views, self.tensors):
            view.copy_(source)
        self.assign(views)
        return buffer


def upload(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Device copies of host tensors, queued on the current stream. ``non_blocking`` makes
    copies from page-locked memory asynchronous DMA; from pageable memory the copy returns
    once the source has been read, so either way the host tensors may be reused after."""
    return [t.to(device, non_blocking=True) for t in tensors]


class ComponentResidency:
    """Moves one component to ``device`` for a phase and back to its own host tensors.

    ``exclude`` leaves submodules alone (a transformer's streamed blocks, which a
    ``LayerStreamer`` manages; modules that run on the host). ``pin_memory`` moves the host
    tensors into one exact-size page-locked buffer first, when the RAM check allows.
    Inference only: weights are re-wrapped without gradients.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device | str,
        *,
        exclude: Iterable[nn.Module] = (),
        pin_memory: bool = False,
    ) -> None:
        self.module = module
        self.device = torch.device(device)
        self._tensors = ModuleTensors(module, exclude)
        self._pinned: torch.Tensor | None = None
        if pin_memory and self._tensors.tensors:
            self._pinned = self._pin()
        self._host = list(self._tensors.tensors)
        self._on_device = False

    def _pin(self) -> torch.Tensor | None:
        needed, lockable = self._tensors.packed_nbytes, lockable_bytes()
        if lockable is not None and needed > lockable:
            logger.warning(
                "not page-locking %s of %s: only %s of host RAM can be locked; uploads stay synchronous",
                format_bytes(needed),
                type(self.module).__name__,
                format_bytes(lockable),
            )
            return None
        return self._tensors.pin()

    @property
    def nbytes(self) -> int:
        """Bytes this component occupies on the device while there."""
        return self._tensors.nbytes

    @property
    def pinned_bytes(self) -> int:
        """Page-locked host bytes holding this component's host tensors (0 when pageable)."""
        return 0 if self._pinned is None else self._pinned.nbytes

    @property
    def on_device(self) -> bool:
        """Whether the module points at device copies now (``load`` then does nothing)."""
        return self._on_device

    def load(self) -> None:
        """Copy the weights to the device (the host tensors are kept, untouched); no-op when there."""
        if not self._on_device:
            self._tensors.assign(upload(self._host, self.device))
            self._on_device = True

    def unload(self) -> None:
        """Drop the device copies (the module points at its host tensors again) and hand the
        freed memory back to the driver; no-op when already unloaded."""
        if self._on_device:
            self._tensors.assign(self._host)
            self._on_device = False
            runtime().empty_cache()
