"""framepack: FramePack image-to-video in pure PyTorch.

Public names are imported lazily so that ``import framepack`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FramePackError": "framepack.errors",
    "CheckpointError": "framepack.errors",
    "ConfigError": "framepack.errors",
    "InputError": "framepack.errors",
    "FramePackPipeline": "framepack.pipeline",
    "GenerationConfig": "framepack.config",
    "F1_REPO": "framepack.components",
    "I2V_REPO": "framepack.components",
    "Conditioning": "framepack.conditioning",
    "PackedContext": "framepack.conditioning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'framepack' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
