"""What a generation hands back: one ``SectionOutput`` per finished section, one ``VideoResult`` at the end."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .video import FrameAssembler, write_mp4


@dataclass(frozen=True)
class SectionOutput:
    """One finished section.

    latents      the latents this section added, in temporal order [1, 16, t, h, w]
    frames       this section's decoded frames, uint8 [n, H, W, 3] (before overlap blending)
    video_frames frames of the video so far
    preview      the preview mp4 of the video so far; it is encoded in the background, so it may still
                 show an earlier section: ``GenerationRun.wait_for_preview()`` waits for this one
    seconds      time this section spent sampling; elapsed: since the run started (all work)
    """

    index: int
    num_sections: int
    latents: torch.Tensor
    frames: np.ndarray
    video_frames: int
    preview: Path
    seconds: float
    elapsed: float

    @property
    def is_last(self) -> bool:
        return self.index == self.num_sections - 1


class VideoResult:
    """A finished video: its latents, and its frames spooled as uint8 in the run directory."""

    def __init__(self, latents: torch.Tensor, frames: FrameAssembler, run_dir: Path, fps: int, crf: int) -> None:
        self.latents = latents
        self.run_dir = run_dir
        self.fps = fps
        self.crf = crf
        self._frames = frames

    @property
    def num_frames(self) -> int:
        return len(self._frames)

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame, uint8 (H, W, 3), in temporal order, read from disk one chunk at a time."""
        return self._frames.frames()

    def save(self, path: str | Path, *, crf: int | None = None) -> Path:
        """Write the video as an H.264 mp4 (the run's crf unless given)."""
        path = Path(path)
        final = self.run_dir / "video.mp4"
        if (crf is None or crf == self.crf) and final.exists():
            if path.resolve() != final.resolve():
                shutil.copyfile(final, path)
            return path
        return write_mp4(path, self.frames(), fps=self.fps, crf=self.crf if crf is None else crf)
