"""LayerStreamer: run a stack of repeated blocks on a device too small to hold them all.

Given the blocks (transformer double/single blocks, Llama layers) and a device memory
budget, ``plan_residency`` decides which blocks stay on the device ("resident") and which
are streamed. A streamed block's weights live on the host and are copied, ahead of use,
into one of ``prefetch + 1`` device *slots*: preallocated byte buffers, each as large as
the largest streamed block. Each streamed block has, per slot, a *shell*: a structural
copy of the block built once, whose parameters are pointed at views into that slot while
the streamer is loaded, so running a streamed block is one copy plus an ordinary call,
with no allocation and no patched module classes.

Where the copies come from (``pin_memory``, default: when the device is CUDA):
  * ``staging="pinned"``: each streamed block is moved once into page-locked host memory
    of exactly its packed size, laid out like a slot: one asynchronous DMA per use;
  * ``staging="ring"``: blocks stay where they are (e.g. memory-mapped, reclaimable page
    cache); before each DMA the block is copied into one of two page-locked staging
    buffers of one slot each, so only those are locked;
  * ``pin_memory=False``: plain copies from wherever the weights are (pageable, slower).
  "pinned" falls back to "ring" (with a warning) when the host cannot lock that much.

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
Every CUDA-runtime call (page-locking, streams, events) goes through ``runtime()``.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..device_runtime import runtime
from ..errors import ConfigError
from ..units import format_bytes
from . import mapped_pages
from .host import lockable_bytes
from .residency import ModuleTensors, upload

logger = logging.getLogger("framepack")

Staging = Literal["pinned", "ring"]
STAGING_BUFFERS = 2  # one being filled on the host while the other's DMA runs


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


def block_nbytes(block: nn.Module) -> int:
    """Bytes of a block's parameters and buffers as the streamer packs them (aligned)."""
    return ModuleTensors(block).packed_nbytes


@dataclass(frozen=True)
class _Shell:
    """A structural copy of a block and its tensors, to be pointed at a slot's views."""

    module: nn.Module
    tensors: ModuleTensors


def _shell(block: nn.Module) -> _Shell:
    """Deepcopy told, via its memo, to keep each of the block's tensors as they are, so
    nothing is copied and every other attribute (hooks, config, eps...) is the block's
    own; its tensors follow the block's order, so a slot's views fit them one to one."""
    memo: dict[int, object] = {id(t): t for t in ModuleTensors(block).tensors}
    module = copy.deepcopy(block, memo)
    return _Shell(module, ModuleTensors(module))


def _choose_staging(requested: Staging, plan: ResidencyPlan) -> Staging:
    """``requested``, or "ring" when the host cannot lock every streamed block.

    Raises ``ConfigError`` when it cannot lock even the staging buffers."""
    buffers = min(STAGING_BUFFERS, len(plan.streamed))
    ring = buffers * plan.slot_bytes
    needed = plan.streamed_bytes if requested == "pinned" else ring
    lockable = lockable_bytes()
    if lockable is None or needed <= lockable:
        return requested
    if ring <= lockable:
        logger.warning(
            "page-locking the %d streamed blocks needs %s but only %s of host RAM can be locked: "
            "staging them through %d page-locked buffer(s) of %s instead (copies are slower)",
            len(plan.streamed),
            format_bytes(needed),
            format_bytes(lockable),
            buffers,
            format_bytes(plan.slot_bytes),
        )
        return "ring"
    raise ConfigError(
        f"streaming needs {format_bytes(ring)} of page-locked host RAM for its staging buffers "
        f"({buffers} x the largest streamed block) but only {format_bytes(lockable)} can be locked "
        "(MemAvailable minus a margin). Free host RAM, or pass pin_memory=False (pageable copies)."
    )


# --- the streamer ----------------------------------------------------------------------


@dataclass
class StreamStats:
    """Measured by the streamer as it runs (bytes are packed, aligned sizes)."""

    resident_bytes: int = 0
    slot_bytes: int = 0
    pinned_bytes: int = 0
    passes: int = 0
    transfers: int = 0
    transferred_bytes: int = 0
    last_pass_transferred_bytes: int = 0
    peak_in_flight_bytes: int = 0
    released_bytes: int = 0  # file-backed pages of streamed blocks dropped after their copy (mapped_pages)

    @property
    def device_bytes(self) -> int:
        """Device memory held now: resident blocks plus slot buffers."""
        return self.resident_bytes + self.slot_bytes


class LayerStreamer:
    """Keep as many ``blocks`` on ``device`` as ``budget_bytes`` allows and stream the rest.

    ``prefetch`` streamed blocks are copied ahead of the one computing (on a side CUDA
    stream, overlapping compute; elsewhere synchronously). ``pin_memory`` and ``staging``
    choose where copies come from (module docstring). Blocks must not be moved after the
    streamer takes them; ``load()`` (or the next ``iterate``) and ``unload()`` move them.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        device: torch.device | str,
        budget_bytes: int | None,
        *,
        prefetch: int = 1,
        pin_memory: bool | None = None,
        staging: Staging = "pinned",
        load: bool = True,
    ) -> None:
        if staging not in ("pinned", "ring"):
            raise ConfigError(f"staging must be 'pinned' or 'ring', got {staging!r}")
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self._tensors = [ModuleTensors(b) for b in self.blocks]
        for i, t in enumerate(self._tensors):
            if any(x.is_meta for x in t.tensors):
                raise ConfigError(f"block {i} still has meta tensors: load its weights before streaming it")
        self.plan = plan_residency([t.packed_nbytes for t in self._tensors], budget_bytes, prefetch)
        self.stats = StreamStats()
        self._streamed = set(self.plan.streamed)
        for i in self.plan.streamed:
            if any(x.device.type != "cpu" for x in self._tensors[i].tensors):
                raise ConfigError(f"block {i} is streamed, so its weights must start on the CPU; it is on the device")
        pin = bool(self.plan.streamed) and (self.device.type == "cuda" if pin_memory is None else pin_memory)
        self.staging: Staging | None = _choose_staging(staging, self.plan) if pin else None
        rt = runtime()
        # Page-locked copies of the streamed blocks ("pinned"), laid out like a slot.
        self._pinned = {i: self._tensors[i].pin() for i in self.plan.streamed} if self.staging == "pinned" else {}
        # Page-locked staging buffers ("ring") and the copies that last read each.
        count = min(STAGING_BUFFERS, len(self.plan.streamed)) if self.staging == "ring" else 0
        self._staging = [rt.pinned_empty(self.plan.slot_bytes) for _ in range(count)]
        self._staging_read: list[Any] = [None] * count
        self._next_staging = 0
        self.stats.pinned_bytes = sum(b.nbytes for b in [*self._pinned.values(), *self._staging])
        self._host = [list(t.tensors) for t in self._tensors]
        for i in self._pinned:  # read once, into page-locked memory
            self._release_host(i)
        self._shells = {i: [_shell(self.blocks[i]) for _ in range(self.plan.slots)] for i in self.plan.streamed}
        self._copy_stream = rt.new_stream(self.device) if self.device.type == "cuda" and self._streamed else None
        self._slots: list[torch.Tensor] = []
        self._slot_free: list[Any] = []
        self._loaded = False
        if load:
            self.load()
        logger.info("LayerStreamer on %s: %s", self.device, self.plan)

    @property
    def on_device(self) -> bool:
        """Whether the resident blocks and the slots are on the device (``load`` then does nothing)."""
        return self._loaded

    # --- moving weights -------------------------------------------------------------
    def _compute_stream(self) -> Any:
        """The stream the blocks run on, where there is a copy stream to order against."""
        return None if self._copy_stream is None else runtime().current_stream(self.device)

    def load(self) -> None:
        """Put the resident blocks on the device, allocate the slots and point the shells at
        them (``iterate`` does it when needed); no-op when loaded."""
        if self._loaded:
            return
        rt = runtime()
        for i in self.plan.resident:
            self._tensors[i].assign(upload(self._host[i], self.device))
        self._slots = [
            torch.empty(self.plan.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(self.plan.slots)
        ]
        self._slot_free = [None] * len(self._slots)
        # The slots may reuse memory that work queued on the compute stream still uses.
        rt.wait_stream(self._copy_stream, self._compute_stream())
        for i, shells in self._shells.items():
            for shell, slot in zip(shells, self._slots):
                shell.tensors.assign(self._tensors[i].views(slot))
        self.stats.resident_bytes = self.plan.resident_bytes
        self.stats.slot_bytes = sum(s.nbytes for s in self._slots)
        self._loaded = True

    def unload(self) -> None:
        """Give back all device memory: resident blocks return to their host tensors (no copy
        when those are the originals, e.g. memory-mapped), shells let go of the slots, the
        slots are freed and the allocator's cache is emptied. The next ``iterate`` loads
        them again; no-op when unloaded."""
        if not self._loaded:
            return
        rt = runtime()
        rt.wait_stream(self._compute_stream(), self._copy_stream)  # no copy may still write a freed slot
        for i in self.plan.resident:
            self._tensors[i].assign(self._host[i])
        for i, shells in self._shells.items():
            for shell in shells:
                shell.tensors.assign(self._host[i])
        self._slots, self._slot_free = [], []
        self.stats.resident_bytes = self.stats.slot_bytes = 0
        self._loaded = False
        rt.empty_cache()

    def _copy_in(self, i: int, slot: int) -> Any:
        """Start copying block ``i`` into ``slot``; returns the event marking it ready (None
        where copies are synchronous)."""
        rt = runtime()
        destination = self._slots[slot]
        source, staging = self._packed_source(i)
        with rt.use_stream(self._copy_stream):
            rt.wait_event(self._copy_stream, self._slot_free[slot])  # the slot's last block has computed
            if source is None:
                for view, host in zip(self._tensors[i].views(destination), self._host[i]):
                    view.copy_(host, non_blocking=True)
                # A pageable source has been read when the copy returns (staged, on CUDA).
                self._release_host(i)
            else:  # same layout as the slot: one contiguous copy
                destination[: source.numel()].copy_(source, non_blocking=True)
            ready = rt.record_event(self._copy_stream)
        if staging is not None:
            self._staging_read[staging] = ready
        return ready

    def _packed_source(self, i: int) -> tuple[torch.Tensor | None, int | None]:
        """Block ``i`` packed like a slot in page-locked memory, and the staging buffer used
        (None, None when there is no page-locked copy: per-tensor copies)."""
        if i in self._pinned:
            return self._pinned[i], None
        if not self._staging:
            return None, None
        k = self._next_staging
        self._next_staging = (k + 1) % len(self._staging)
        runtime().synchronize_event(self._staging_read[k])  # its previous DMA must have read it
        buffer = self._staging[k][: self._tensors[i].packed_nbytes]
        for view, host in zip(self._tensors[i].views(buffer), self._host[i]):
            view.copy_(host)
        self._release_host(i)
        return buffer, k

    def _release_host(self, i: int) -> None:
        """Drop the process's pages of streamed block ``i``'s memory-mapped host tensors, now copied:
        the RSS of a pass stays near one block, not the whole file (framepack.memory.mapped_pages)."""
        self.stats.released_bytes += mapped_pages.release(self._host[i])

    # --- running --------------------------------------------------------------------
    def iterate(self, start: int = 0, stop: int | None = None) -> Iterator[nn.Module]:
        """Yield blocks ``start..stop-1`` in order, each ready on the device; call each
        exactly like the original block before asking for the next one."""
        stop = len(self.blocks) if stop is None else stop
        if not 0 <= start <= stop <= len(self.blocks):
            raise ConfigError(f"iterate({start}, {stop}) is outside the {len(self.blocks)} blocks")
        self.load()
        rt = runtime()
        order = [i for i in range(start, stop) if i in self._streamed]
        stats = self.stats
        stats.passes += 1
        stats.last_pass_transferred_bytes = 0
        free_slots = deque(range(len(self._slots)))
        pending: deque[tuple[int, int, Any]] = deque()
        in_flight_bytes = 0
        issued = 0
        compute = self._compute_stream()

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
            self._slot_free[slot] = rt.record_event(compute)
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
                rt.wait_event(compute, ready)
                in_use = (i, slot)
                yield self._shells[i][slot].module
                in_use = None
                release(i, slot)
                top_up()  # after the block's kernels are queued, so host-side copies overlap them
        finally:
            if in_use is not None:
                release(*in_use)
            for i, slot, ready in pending:  # abandoned early: later copies must not race with freed slots
                rt.wait_event(compute, ready)
                release(i, slot)
