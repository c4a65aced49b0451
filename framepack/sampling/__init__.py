"""Sigma schedules, the UniPC sampler, guidance and the section loop.

Names are exported lazily, so importing one module of the package loads only what it needs.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "generate_latents": "framepack.sampling.loop",
    "stream_latents": "framepack.sampling.loop",
    "Progress": "framepack.sampling.loop",
    "SectionResult": "framepack.sampling.loop",
    "plan_sections": "framepack.sampling.sections",
    "SectionPlan": "framepack.sampling.sections",
    "sample_unipc": "framepack.sampling.unipc",
    "flux_sigmas": "framepack.sampling.schedule",
    "SamplingSettings": "framepack.sampling.settings",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
