"""Device memory: what lives on the device, when, and how it gets there.

Six modules, lowest first (each imports only those above it; models import the first four):

  host.py       how much host RAM may still be page-locked (``lockable_bytes``)
  mapped_pages.py  dropping the pages of memory-mapped weights a streamer has copied
  residency.py  a module's tensors and moving a whole component to the device and back
  streamer.py   which blocks of a stack stay resident, and streaming the rest through slots
  planner.py    the pipeline's plan for one budget: pure arithmetic from sizes and estimates
  placement.py  carrying a plan out, phase by phase, on the named components

The types, one line each:

  ModuleTensors       a module's unique tensors, their packed offsets, and repointing the module at copies
  ComponentSize       a component's device bytes: the part always whole plus each streamable block
  ComponentResidency  one component (or all of it but some subtrees) on the device for a phase
  ResidencyPlan       which blocks stay resident and how many slots the streamed ones share
  StreamStats         what a streamer measured as it ran (bytes resident, in slots, copied)
  LayerStreamer       runs a stack of blocks within a device budget, copying streamed ones ahead of use
  MemoryPlan          the plan for a budget: swapping, VAE tiling, each streamer's plan, bytes per phase
  Placement           applies a MemoryPlan: sets up streaming, loads each phase's components

One vocabulary on everything that holds device memory (``ComponentResidency``,
``LayerStreamer`` and a streaming model, ``framepack.models.streaming.StreamableModel``):
``load()`` puts it on the device for the coming phase, ``unload()`` gives the device memory
back and keeps the set-up (plan, page-locked host copies); both are no-ops when already done,
and ``on_device`` says which. A model's ``enable_streaming``/``disable_streaming`` set up and
tear down its streamer.

Names are exported lazily: ``framepack.models`` imports ``memory.streamer`` and
``memory.residency``, while ``memory.placement`` imports the models, so this package
must not import its submodules eagerly.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "available_host_bytes": "framepack.memory.host",
    "lockable_bytes": "framepack.memory.host",
    "ModuleTensors": "framepack.memory.residency",
    "ComponentSize": "framepack.memory.residency",
    "ComponentResidency": "framepack.memory.residency",
    "ResidencyPlan": "framepack.memory.streamer",
    "plan_residency": "framepack.memory.streamer",
    "minimum_budget": "framepack.memory.streamer",
    "block_nbytes": "framepack.memory.streamer",
    "StreamStats": "framepack.memory.streamer",
    "LayerStreamer": "framepack.memory.streamer",
    "MemoryPlan": "framepack.memory.planner",
    "plan_pipeline_memory": "framepack.memory.planner",
    "plan_memory": "framepack.memory.planner",
    "Placement": "framepack.memory.placement",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
