"""framepack: FramePack image-to-video in pure PyTorch.

The names a user needs: the pipeline, its settings and prompt schedules, results and
progress, the errors it raises, the section loop for research code
(``generate_latents``/``stream_latents`` on a ``Conditioning`` and ``PackedContext``), the
cache policies and the checkpoint repos.
Everything else lives in its subpackage, which exports its own names: ``framepack.models``,
``framepack.sampling``, ``framepack.cache``, ``framepack.memory``, ``framepack.video``.

Names are imported lazily so that ``import framepack`` stays cheap (no torch until used).
"""

from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    "FramePackPipeline": "framepack.pipeline",
    "GenerationConfig": "framepack.config",
    "PromptSchedule": "framepack.prompt_schedule",
    "SamplingSettings": "framepack.sampling.settings",
    "VideoResult": "framepack.results",
    "SectionOutput": "framepack.results",
    "Progress": "framepack.sampling.loop",
    "FramePackError": "framepack.errors",
    "CheckpointError": "framepack.errors",
    "ConfigError": "framepack.errors",
    "InputError": "framepack.errors",
    "NumericalError": "framepack.errors",
    "OutputError": "framepack.errors",
    "GenerationCancelled": "framepack.errors",
    "GenerationInterrupted": "framepack.errors",
    "generate_latents": "framepack.sampling.loop",
    "stream_latents": "framepack.sampling.loop",
    "Conditioning": "framepack.conditioning",
    "PackedContext": "framepack.conditioning",
    "NoCache": "framepack.cache",
    "TeaCache": "framepack.cache",
    "MagCache": "framepack.cache",
    "FirstBlockCache": "framepack.cache",
    "I2V_REPO": "framepack.components",
    "F1_REPO": "framepack.components",
    "HUNYUAN_REPO": "framepack.components",
    "REDUX_REPO": "framepack.components",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
