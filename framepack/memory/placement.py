"""Where each component lives, phase by phase, under one device-memory budget.

``plan_pipeline_memory`` decides (pure arithmetic); ``Placement`` carries the decision
out: it sets up layer streaming for the transformer and the Llama encoder, and with a
tight budget loads each phase's components onto the device only for that phase.
The plan's sizes and activation estimates come from ``planner.plan_memory``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..device_runtime import runtime
from ..errors import ConfigError
from ..models.streaming import StreamableModel
from ..units import GIB
from .planner import PHASES, MemoryPlan, component_sizes
from .residency import ComponentResidency, ComponentSize

logger = logging.getLogger("framepack")


def device_budget_gb(device: torch.device, requested: float | None) -> float | None:
    """The budget to plan with. On CUDA it is at most the device memory free now (other
    processes and the desktop hold some), and that free memory when none is asked for: a
    plan for more than the card has would run out of memory mid-video. Elsewhere the
    request as given (None: no budget)."""
    if requested is not None and (
        isinstance(requested, bool) or not isinstance(requested, (int, float)) or not 0 < requested < math.inf
    ):
        raise ConfigError(f"vram_budget_gb: expected a finite number of GiB > 0, or None; got {requested!r}")
    if device.type != "cuda":
        return requested
    free_gb = runtime().mem_get_info(device)[0] / GIB
    if requested is None:
        logger.info("vram budget: %.2f GiB, the memory free on %s", free_gb, device)
        return free_gb
    if requested > free_gb:
        logger.warning(
            "vram budget %.2f GiB is more than the %.2f GiB free on %s: planning with %.2f GiB",
            requested,
            free_gb,
            device,
            free_gb,
        )
        return free_gb
    return requested


class Placement:
    """Applies a ``MemoryPlan`` to the named components (``PHASES`` names) on ``device``.

    With swapping, a phase's components come onto the device when it starts, and the
    components of earlier phases leave, least recently used first, only while the new phase
    would not fit beside them:
    a budget that holds the transformer's resident blocks and the VAE keeps both between
    sections instead of uploading gigabytes twice per section.
    """

    def __init__(self, modules: Mapping[str, nn.Module], device: torch.device, plan: MemoryPlan) -> None:
        self.plan = plan
        self._modules = dict(modules)
        # What loads and unloads each component: the model itself when it streams, else a residency.
        self._held: dict[str, ComponentResidency | StreamableModel] = {}
        self._device_bytes: dict[str, int] = {}
        sizes = component_sizes(self._modules)
        for name, module in self._modules.items():
            size = sizes[name]
            streaming = plan.streaming.get(name)
            if isinstance(module, StreamableModel) and isinstance(size, ComponentSize) and streaming is not None:
                if streaming.streamed:
                    # Llama runs once per video: its streamed blocks are not worth page-locked memory.
                    module.enable_streaming(
                        device,
                        streaming.device_bytes,
                        num_blocks=len(streaming.block_bytes),
                        pin_memory=False if name == "text_encoder" else None,
                        load=not plan.swap_components,
                    )
                    self._held[name] = module
                    self._device_bytes[name] = size.fixed_bytes + streaming.device_bytes
                    continue
                # Exactly what the plan counted: a text encoder's unread last layers and its
                # embedding table stay on the host.
                residency = module.residency(device, len(streaming.block_bytes))
            else:
                residency = ComponentResidency(module, device)
            self._held[name] = residency
            self._device_bytes[name] = residency.nbytes
            if not plan.swap_components:
                residency.load()
        self._on_device: list[str] = [] if plan.swap_components else list(self._modules)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Components of phase ``name`` on the device for the block (kept there until room is needed)."""
        if self.plan.swap_components:
            names = [n for n in PHASES[name] if n in self._modules]
            room = self.plan.budget_bytes - self.plan.reserve_bytes - self.plan.phase_device_bytes[name]
            others = [n for n in self._on_device if n not in names]  # least recently used first
            while others and sum(self._device_bytes[n] for n in others) > room:
                self._unload(others.pop(0))  # the unload hands its memory back to the driver
            for n in names:
                self._load(n)
        yield

    def release(self) -> None:
        """Every weight back on its host tensors (streaming switched off)."""
        for module in self._modules.values():
            if isinstance(module, StreamableModel):
                module.disable_streaming()
        for held in self._held.values():
            if isinstance(held, ComponentResidency):
                held.unload()
        self._on_device = []

    def _load(self, name: str) -> None:
        if name in self._on_device:  # already there: now the most recently used
            self._on_device.remove(name)
        else:
            self._held[name].load()
        self._on_device.append(name)

    def _unload(self, name: str) -> None:
        self._held[name].unload()
        self._on_device.remove(name)
