"""Explicit layer streaming for a model built around a stack of repeated blocks.

A model mixes in ``StreamableModel``, names its blocks (``streamable_blocks``) and fetches
them through ``self.streamer.iterate(...)`` whenever ``self.streamer`` is set. Then::

    streamer = model.enable_streaming("cuda", budget_bytes)   # non-block weights -> device,
    out = model(...)                                          # blocks resident or streamed
    model.unload()       # phase over: give the device memory back, keep the set-up
    model.load()         # next phase: weights back on the device
    model.disable_streaming()  # everything back on its own host tensors

``budget_bytes`` bounds the *blocks* (resident blocks + the streamer's slots): the
non-block weights (``streaming_sizes().fixed_bytes``: embedders, norms, heads) are always
whole on the device on top of it, exactly the split ``plan_pipeline_memory`` plans with.
``budget_bytes=None`` keeps every block resident. Modules a model names in
``host_modules`` (a lookup table read a few rows at a time) stay on the host and count
in neither.

This mixin is the models' whole dependency on memory handling: it uses the low layer of
``framepack.memory`` (``residency``, ``streamer``) and never the planner or the placement,
which use it (``tests/test_import_graph.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..memory.residency import ComponentResidency, ComponentSize, ModuleTensors
from ..memory.streamer import LayerStreamer, Staging, block_nbytes


@dataclass(frozen=True)
class _StreamingSetup:
    residency: ComponentResidency  # every weight outside the blocks
    streamer: LayerStreamer
    arguments: dict[str, Any]  # enable_streaming's, but ``load``: to set it up again (``streaming_paused``)


class StreamableModel(nn.Module):
    """Mixin for models whose blocks a ``LayerStreamer`` can stream (inference only)."""

    _streaming: _StreamingSetup | None = None

    def streamable_blocks(self) -> Sequence[nn.Module]:
        """Every repeated block, in the order a forward pass runs them."""
        raise NotImplementedError

    def host_modules(self) -> Sequence[nn.Module]:
        """Modules that run on the host while streaming (their weights never go to the device)."""
        return ()

    @property
    def streamer(self) -> LayerStreamer | None:
        """The active streamer, or None when streaming is off."""
        return None if self._streaming is None else self._streaming.streamer

    @property
    def on_device(self) -> bool:
        """Whether streaming is on and the weights it places are on the device now (the
        non-block weights, the resident blocks and the slots): ``load`` would do nothing."""
        return self._streaming is not None and self._streaming.residency.on_device

    @property
    def device_bytes(self) -> int:
        """Device memory the weights hold now: non-block weights plus the streamer's resident
        blocks and slots (0 when unloaded or not streaming)."""
        if self._streaming is None or not self._streaming.residency.on_device:
            return 0
        return self._streaming.residency.nbytes + self._streaming.streamer.stats.device_bytes

    def _device_excluded(self) -> list[nn.Module]:
        """Modules whose weights ``enable_streaming`` leaves alone: blocks (the streamer's) and host modules."""
        return [*self.streamable_blocks(), *self.host_modules()]

    def _leading_blocks(self, num_blocks: int | None) -> Sequence[nn.Module]:
        blocks = self.streamable_blocks()
        if num_blocks is None:
            return blocks
        if not 0 <= num_blocks <= len(blocks):
            raise ConfigError(
                f"{type(self).__name__}: num_blocks must be in [0, {len(blocks)}] (blocks to stream), got {num_blocks}"
            )
        return blocks[:num_blocks]

    def streaming_sizes(self, num_blocks: int | None = None) -> ComponentSize:
        """Device bytes of this model as ``plan_pipeline_memory`` wants them: the non-block
        weights (always whole on the device; ``host_modules`` excluded) and each streamable
        block (packed size).
        ``num_blocks`` counts only the first blocks, as ``enable_streaming`` does."""
        fixed = ModuleTensors(self, exclude=self._device_excluded()).nbytes
        return ComponentSize(fixed, tuple(block_nbytes(b) for b in self._leading_blocks(num_blocks)))

    def residency(
        self, device: torch.device | str, num_blocks: int | None = None, *, pin_memory: bool = False
    ) -> ComponentResidency:
        """The whole model on ``device`` without streaming: exactly what ``streaming_sizes(num_blocks)``
        counts (the first ``num_blocks`` blocks and the non-block weights, never the
        ``host_modules`` or the blocks past ``num_blocks``)."""
        unused = self.streamable_blocks()[len(self._leading_blocks(num_blocks)) :]
        return ComponentResidency(self, device, exclude=[*self.host_modules(), *unused], pin_memory=pin_memory)

    def enable_streaming(
        self,
        device: torch.device | str,
        budget_bytes: int | None,
        *,
        prefetch: int = 1,
        pin_memory: bool | None = None,
        staging: Staging = "pinned",
        num_blocks: int | None = None,
        load: bool = True,
    ) -> LayerStreamer:
        """Move every non-block weight to ``device`` and stream the blocks within ``budget_bytes``.

        ``num_blocks`` manages only the first blocks (a text encoder read at an inner layer
        never runs the last ones; they stay on the host, unread). ``pin_memory`` and
        ``staging`` are the ``LayerStreamer``'s; with page-locked streamed blocks
        ("pinned") the non-block weights are page-locked too, as they are uploaded again
        after every ``unload``. Pass ``pin_memory=False`` for a model run once per video.
        The model's weights must be on the CPU. ``load=False`` sets everything up but leaves
        the device empty until ``load`` (a component that waits for its phase). Returns
        the streamer (its ``plan`` and ``stats`` say what it does).
        """
        self.disable_streaming()
        blocks = self._leading_blocks(num_blocks)
        # The streamer first: a budget it refuses leaves the model untouched.
        streamer = LayerStreamer(
            blocks, device, budget_bytes, prefetch=prefetch, pin_memory=pin_memory, staging=staging, load=load
        )
        residency = ComponentResidency(
            self, streamer.device, exclude=self._device_excluded(), pin_memory=streamer.staging == "pinned"
        )
        if load:
            residency.load()
        arguments = dict(
            device=device,
            budget_bytes=budget_bytes,
            prefetch=prefetch,
            pin_memory=pin_memory,
            staging=staging,
            num_blocks=num_blocks,
        )
        self._streaming = _StreamingSetup(residency, streamer, arguments)
        return streamer

    @contextmanager
    def streaming_paused(self, undo: Callable[[], None] | None = None) -> Iterator[None]:
        """Streaming off while tensors are added to or removed from the model (a streamer's
        packed sizes and shells are fixed when it is set up), then on again with the same
        arguments, loaded or unloaded as before. When the budget cannot hold the changed
        blocks, ``undo`` reverts the change, streaming resumes as it was and the
        ``ConfigError`` is raised. Does nothing when streaming is off."""
        setup = self._streaming
        if setup is None:
            yield
            return
        arguments = dict(setup.arguments, load=self.on_device)
        self.disable_streaming()
        try:
            yield
        except BaseException:
            self.enable_streaming(**arguments)
            raise
        try:
            self.enable_streaming(**arguments)
        except ConfigError:
            if undo is None:
                raise
            undo()
            self.enable_streaming(**arguments)
            raise

    def disable_streaming(self) -> None:
        """Every weight back on its own host tensor; blocks are fetched directly again."""
        if self._streaming is None:
            return
        self.unload()
        self._streaming = None

    def load(self) -> None:
        """Put the non-block weights and the resident blocks on the device (after ``unload``,
        or ``enable_streaming(..., load=False)``); no-op when they are there."""
        setup = self._require_streaming("load")
        setup.residency.load()
        setup.streamer.load()

    def unload(self) -> None:
        """Free the device memory this model holds, keeping the streaming set-up (plan,
        page-locked host copies, shells) for ``load``; no-op when already unloaded."""
        setup = self._require_streaming("unload")
        setup.streamer.unload()
        setup.residency.unload()

    def _require_streaming(self, what: str) -> _StreamingSetup:
        if self._streaming is None:
            raise ConfigError(f"{type(self).__name__}.{what}() needs enable_streaming(device, budget_bytes) first")
        return self._streaming
