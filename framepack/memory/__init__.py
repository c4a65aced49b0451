"""Device memory: the block streamer, component residency, the planner and placement.

Names are exported lazily: ``framepack.models`` imports ``memory.streamer`` and
``memory.residency``, while ``memory.placement`` imports the models, so this package
must not import its submodules eagerly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "available_host_bytes": "host",
    "lockable_bytes": "host",
    "ModuleTensors": "residency",
    "ComponentResidency": "residency",
    "ComponentSize": "residency",
    "ResidencyPlan": "streamer",
    "plan_residency": "streamer",
    "minimum_budget": "streamer",
    "block_nbytes": "streamer",
    "StreamStats": "streamer",
    "LayerStreamer": "streamer",
    "MemoryPlan": "planner",
    "plan_pipeline_memory": "planner",
    "Placement": "placement",
    "plan_memory": "planner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'framepack.memory' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
