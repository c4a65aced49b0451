"""Cost model: FLOPs, memory and predicted time of a generation, before running it.

flops.py     FLOPs of the transformer (by hand, checked against recorded kernels)
vae_flops.py FLOPs of the VAE and the encoders (by hand too, checked the same way)
meta.py      meta-device models for the memory planner, built without initialisers
caching.py   the share of steps a cache policy computes
memory.py    the memory planner's plan for a budget, on meta-device models
profiles.py  device profiles: published peak rates and stated efficiencies
measure.py   the same rates, timed on the device at hand
estimate.py  ``estimate(config, profile)`` -> ``CostEstimate``: time and memory
compare.py   a table of estimates over a grid of settings
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "estimate": "framepack.cost.estimate",
    "CostEstimate": "framepack.cost.estimate",
    "ModelConfigs": "framepack.cost.memory",
    "DeviceProfile": "framepack.cost.profiles",
    "PROFILES": "framepack.cost.profiles",
    "device_profile": "framepack.cost.profiles",
    "measure_profile": "framepack.cost.measure",
    "compare": "framepack.cost.compare",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
