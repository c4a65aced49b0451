"""LayerStreamer: run a stack of repeated blocks on a device too small to hold them all.

Given the blocks (transformer double/single blocks, Llama layers) and a device memory
budget, ``plan_residency`` decides which blocks stay on the device ("resident") and which
are streamed. A streamed block's weights live on the host (pinned when the device is
CUDA, so copies are asynchronous DMA) and are copied, ahead of use, into one of
``prefetch + 1`` device *slots*: preallocated byte buffers, each as large as the largest
streamed block. Each streamed block has, per slot, a *shell*: a structural copy of the
block built once whose parameters are views into that slot, so running a streamed block
is one copy plus an ordinary call, with no allocation and no patched module classes.

Planning rule (documented because it trades speed for memory):
  * everything fits -> everything resident;
  * otherwise stream the fewest blocks ``s`` such that
    ``resident bytes + min(prefetch + 1, s) * largest streamed block <= budget``,
    with the ``s`` streamed blocks spread evenly over the stack (the last block always
    streams, the first stays resident while possible). Spreading gives each copy the
    compute of the resident blocks before it to hide behind, which a "resident prefix,
    streamed tail" layout does not: its tail runs at copy speed.

Usage in a model (the only integration point)::

    streamer = LayerStreamer(model.blocks, device, budget_bytes, prefetch=1)
    for block in streamer.iterate(0, len(model.blocks)):
        x = block(x)

The streamer is for inference: shells share slot memory, so gradients are meaningless.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError
from .residency import ModuleTensors

logger = logging.getLogger("framepack")

# Every tensor in a packed block starts on this boundary, so views of any dtype are aligned
# (and vectorised kernels see the same alignment as with freshly allocated tensors).
ALIGNMENT = 256


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def format_bytes(nbytes: int) -> str:
    """Human-readable size in binary units (what ``nvidia-smi`` and the budget use)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


# --- planning: pure arithmetic ---------------------------------------------------------


@dataclass(frozen=True)
class ResidencyPlan:
    """Which blocks stay on the device and which stream through ``slots`` device buffers."""

    block_bytes: tuple[int, ...]
    budget_bytes: int | None
    prefetch: int
    resident: tuple[int, ...]
    streamed: tuple[int, ...]

    @property
    def slots(self) -> int:
        """Streamed blocks in flight at once: the one computing plus ``prefetch`` loading."""
        return min(self.prefetch + 1, len(self.streamed))

    @property
    def slot_bytes(self) -> int:
        """Size of one slot: the largest streamed block (slots are interchangeable)."""
        return max((self.block_bytes[i] for i in self.streamed), default=0)

    @property
    def resident_bytes(self) -> int:
        return sum(self.block_bytes[i] for i in self.resident)

    @property
    def device_bytes(self) -> int:
        """Device memory the streamer holds: resident blocks plus its slots."""
        return self.resident_bytes + self.slots * self.slot_bytes

    @property
    def streamed_bytes(self) -> int:
        """Bytes copied to the device by one pass over every block."""
        return sum(self.block_bytes[i] for i in self.streamed)

    def __str__(self) -> str:
        budget = "no budget" if self.budget_bytes is None else f"budget {format_bytes(self.budget_bytes)}"
        text = (
            f"{len(self.block_bytes)} blocks: {len(self.resident)} resident ({format_bytes(self.resident_bytes)}), "
            f"{len(self.streamed)} streamed"
        )
        if self.streamed:
            text += f" {list(self.streamed)} through {self.slots} slot(s) of {format_bytes(self.slot_bytes)}"
        return f"{text}; device {format_bytes(self.device_bytes)} of {budget}"


def spread_indices(count: int, total: int) -> tuple[int, ...]:
    """``count`` of ``range(total)`` spread evenly, the last index always included."""
    return tuple(i for i in range(total) if (i + 1) * count // total > i * count // total)


def plan_residency(block_bytes: Sequence[int], budget_bytes: int | None, prefetch: int = 1) -> ResidencyPlan:
    """Decide which blocks stream for a device budget (the rule is in the module docstring).

    ``budget_bytes=None`` keeps every block resident. Raises ``ConfigError`` naming the
    smallest workable budget when even streaming every block does not fit.
    """
    sizes = tuple(int(b) for b in block_bytes)
    if any(b < 0 for b in sizes):
        raise ConfigError(f"block sizes must be >= 0 bytes, got {list(sizes)}")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ConfigError(f"prefetch must be an integer >= 0 (blocks copied ahead of use), got {prefetch!r}")
    if budget_bytes is not None and budget_bytes < 0:
        raise ConfigError(f"budget_bytes must be >= 0 or None (no budget), got {budget_bytes}")
    n = len(sizes)
    if budget_bytes is None or sum(sizes) <= budget_bytes:
        return ResidencyPlan(sizes, budget_bytes, prefetch, tuple(range(n)), ())
    for plan in _streaming_candidates(sizes, budget_bytes, prefetch):
        if plan.device_bytes <= budget_bytes:
            return plan
    smallest = minimum_budget(sizes, prefetch)
    raise ConfigError(
        f"a device budget of {budget_bytes} bytes ({format_bytes(budget_bytes)}) cannot run {n} blocks "
        f"of up to {format_bytes(max(sizes))}: streaming keeps {min(prefetch + 1, n)} block(s) in flight "
        f"(prefetch={prefetch}), so the smallest budget is {smallest} bytes ({format_bytes(smallest)}). "
        "Raise the budget or lower prefetch."
    )


def minimum_budget(block_bytes: Sequence[int], prefetch: int = 1) -> int:
    """The smallest budget ``plan_residency`` accepts for these blocks."""
    sizes = tuple(int(b) for b in block_bytes)
    return min((p.device_bytes for p in _streaming_candidates(sizes, None, prefetch)), default=0)


def _streaming_candidates(sizes: tuple[int, ...], budget_bytes: int | None, prefetch: int) -> Iterator[ResidencyPlan]:
    """Plans streaming 1, 2, ... every block, spread evenly, in that order."""
    n = len(sizes)
    for count in range(1, n + 1):
        streamed = spread_indices(count, n)
        resident = tuple(i for i in range(n) if i not in set(streamed))
        yield ResidencyPlan(sizes, budget_bytes, prefetch, resident, streamed)


# --- the blocks' tensors ---------------------------------------------------------------


class _PackedBlock(ModuleTensors):
    """A block's unique tensors with the byte offsets they take in a slot."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__(block)
        self.offsets: list[int] = []
        offset = 0
        for tensor in self.tensors:
            self.offsets.append(offset)
            offset += _aligned(tensor.nbytes)
        self.packed_nbytes = offset

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """This block's tensors laid out in a flat byte ``buffer`` (no copy)."""
        return [
            buffer[offset : offset + t.nbytes].view(t.dtype).view(t.shape)
            for t, offset in zip(self.tensors, self.offsets)
        ]


def block_nbytes(block: nn.Module) -> int:
    """Bytes of a block's parameters and buffers as the streamer packs them (aligned)."""
    return _PackedBlock(block).packed_nbytes


def _shell(block: nn.Module, tensors: _PackedBlock, views: Sequence[torch.Tensor]) -> nn.Module:
    """A structural copy of ``block`` whose tensors are ``views``: deepcopy told, via its memo,
    to substitute each original tensor, so nothing is copied and every other attribute
    (hooks, config, eps...) is the block's own."""
    memo: dict[int, object] = {}
    for original, view in zip(tensors.tensors, views):
        memo[id(original)] = (
            nn.Parameter(view, requires_grad=False) if isinstance(original, nn.Parameter) else view
        )
    return copy.deepcopy(block, memo)


# --- the streamer ----------------------------------------------------------------------


@dataclass
class StreamStats:
    """Measured by the streamer as it runs (bytes are packed, aligned sizes)."""

    resident_bytes: int = 0
    slot_bytes: int = 0
    passes: int = 0
    transfers: int = 0
    transferred_bytes: int = 0
    last_pass_transferred_bytes: int = 0
    peak_in_flight_bytes: int = 0

    @property
    def device_bytes(self) -> int:
        """Device memory held now: resident blocks plus slot buffers."""
        return self.resident_bytes + self.slot_bytes


class LayerStreamer:
    """Keep as many ``blocks`` on ``device`` as ``budget_bytes`` allows and stream the rest.

    ``prefetch`` streamed blocks are copied ahead of the one computing (on a side CUDA
    stream, overlapping compute; elsewhere synchronously). ``pin_memory`` (default: only
    for CUDA) moves streamed weights into page-locked host memory for asynchronous DMA;
    that memory is locked RAM, so pass ``False`` to leave memory-mapped weights in the page
    cache at the cost of slower, staged copies. Blocks must not be moved after the
    streamer takes them; ``offload()`` and ``load()`` (or the next ``iterate``) move them.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        device: torch.device | str,
        budget_bytes: int | None,
        *,
        prefetch: int = 1,
        pin_memory: bool | None = None,
    ) -> None:
        self.blocks = list(blocks)
        self.device = _normalised(torch.device(device))
        self._tensors = [_PackedBlock(b) for b in self.blocks]
        for i, t in enumerate(self._tensors):
            if any(x.is_meta for x in t.tensors):
                raise ConfigError(f"block {i} still has meta tensors: load its weights before streaming it")
        self.plan = plan_residency([t.packed_nbytes for t in self._tensors], budget_bytes, prefetch)
        self.stats = StreamStats()
        self._host = [list(t.tensors) for t in self._tensors]
        streamed = set(self.plan.streamed)
        for i in self.plan.streamed:
            if any(x.device.type != "cpu" for x in self._host[i]):
                raise ConfigError(f"block {i} is streamed, so its weights must start on the CPU; it is on the device")
        self._pinned: dict[int, torch.Tensor] = {}
        if self.plan.streamed and (self.device.type == "cuda" if pin_memory is None else pin_memory):
            for i in self.plan.streamed:
                self._pin(i)
        self._streamed = streamed
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" and streamed else None
        self._slots: list[torch.Tensor] = []
        self._shells: dict[int, list[nn.Module]] = {}
        self._slot_free: list[torch.cuda.Event | None] = []
        self._loaded = False
        self.load()
        logger.info("LayerStreamer on %s: %s", self.device, self.plan)

    # --- moving weights -------------------------------------------------------------
    def _pin(self, i: int) -> None:
        """Repack block ``i`` into one page-locked buffer laid out like a slot: one DMA per use."""
        tensors = self._tensors[i]
        buffer = self._pinned_buffer(tensors.packed_nbytes)
        views = tensors.views(buffer)
        for view, source in zip(views, self._host[i]):
            view.copy_(source)
        tensors.assign(views)
        self._host[i] = views
        self._pinned[i] = buffer

    @staticmethod
    def _pinned_buffer(nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def load(self) -> None:
        """Put the resident blocks on the device and allocate the slots (``iterate`` does it when needed)."""
        if self._loaded:
            return
        for i in self.plan.resident:
            self._tensors[i].assign([t.to(self.device) for t in self._host[i]])
        self._slots = [
            torch.empty(self.plan.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(self.plan.slots)
        ]
        self._slot_free = [None] * len(self._slots)
        self._shells = {
            i: [_shell(self.blocks[i], self._tensors[i], self._tensors[i].views(s)) for s in self._slots]
            for i in self.plan.streamed
        }
        self.stats.resident_bytes = self.plan.resident_bytes
        self.stats.slot_bytes = sum(s.nbytes for s in self._slots)
        self._loaded = True

    def offload(self) -> None:
        """Give back all device memory: resident blocks return to their host tensors (no copy
        when those are the originals, e.g. memory-mapped), slots are freed. The next
        ``iterate`` loads them again."""
        if not self._loaded:
            return
        if self._copy_stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
        for i in self.plan.resident:
            self._tensors[i].assign(self._host[i])
        self._slots, self._shells, self._slot_free = [], {}, []
        self.stats.resident_bytes = self.stats.slot_bytes = 0
        self._loaded = False

    def _copy_in(self, i: int, slot: int) -> torch.cuda.Event | None:
        """Start copying block ``i`` into ``slot``; returns the event marking it ready (CUDA only)."""
        destination = self._slots[slot]
        pinned = self._pinned.get(i)
        if self._copy_stream is None:
            self._copy_tensors(i, destination, pinned)
            return None
        with torch.cuda.stream(self._copy_stream):
            free = self._slot_free[slot]
            if free is not None:  # the slot's previous block must have finished computing
                self._copy_stream.wait_event(free)
            self._copy_tensors(i, destination, pinned)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return ready

    def _copy_tensors(self, i: int, destination: torch.Tensor, pinned: torch.Tensor | None) -> None:
        if pinned is not None:  # same layout as the slot: one contiguous copy
            destination[: pinned.numel()].copy_(pinned, non_blocking=True)
            return
        for view, source in zip(self._tensors[i].views(destination), self._host[i]):
            view.copy_(source, non_blocking=True)

    # --- running --------------------------------------------------------------------
    def iterate(self, start: int = 0, stop: int | None = None) -> Iterator[nn.Module]:
        """Yield blocks ``start..stop-1`` in order, each ready on the device; call each
        exactly like the original block before asking for the next one."""
        stop = len(self.blocks) if stop is None else stop
        if not 0 <= start <= stop <= len(self.blocks):
            raise ConfigError(f"iterate({start}, {stop}) is outside the {len(self.blocks)} blocks")
        self.load()
        order = [i for i in range(start, stop) if i in self._streamed]
        stats = self.stats
        stats.passes += 1
        stats.last_pass_transferred_bytes = 0
        free_slots = deque(range(len(self._slots)))
        pending: deque[tuple[int, int, torch.cuda.Event | None]] = deque()
        in_flight_bytes = 0
        issued = 0
        compute = torch.cuda.current_stream(self.device) if self._copy_stream is not None else None

        def top_up() -> None:
            nonlocal issued, in_flight_bytes
            while free_slots and issued < len(order):
                i, slot = order[issued], free_slots.popleft()
                pending.append((i, slot, self._copy_in(i, slot)))
                issued += 1
                nbytes = self._tensors[i].packed_nbytes
                in_flight_bytes += nbytes
                stats.transfers += 1
                stats.transferred_bytes += nbytes
                stats.last_pass_transferred_bytes += nbytes
                stats.peak_in_flight_bytes = max(stats.peak_in_flight_bytes, in_flight_bytes)

        def release(i: int, slot: int) -> None:
            nonlocal in_flight_bytes
            if compute is not None:
                done = torch.cuda.Event()
                done.record(compute)
                self._slot_free[slot] = done
            free_slots.append(slot)
            in_flight_bytes -= self._tensors[i].packed_nbytes

        in_use: tuple[int, int] | None = None
        try:
            top_up()
            for i in range(start, stop):
                if i not in self._streamed:
                    yield self.blocks[i]
                    continue
                _, slot, ready = pending.popleft()
                if ready is not None and compute is not None:
                    compute.wait_event(ready)
                in_use = (i, slot)
                yield self._shells[i][slot]
                in_use = None
                release(i, slot)
                top_up()  # after the block's kernels are queued, so pageable copies overlap them
        finally:
            if in_use is not None:
                release(*in_use)
            for i, slot, ready in pending:  # abandoned early: later copies must not race with freed slots
                if ready is not None and compute is not None:
                    compute.wait_event(ready)
                release(i, slot)


def _normalised(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>`` so streams and events agree on one device."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device
