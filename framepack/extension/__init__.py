"""Continuing a video: a finished run directory or a video file, extended by forward sections.

``FramePackPipeline.extend`` / ``stream_extend`` and ``framepack extend`` use it. The
extension is a forward run of its own, in a new run directory, whose first sections are the
source's (``run.py``); the source is only read.
"""

from __future__ import annotations

from .run import ExtensionRun, source_config, start_extension
from .video_source import given_sections

__all__ = ["ExtensionRun", "given_sections", "source_config", "start_extension"]
