"""A video file to be continued: its frames fitted to a bucket, its last frames encoded as history.

As FramePack-Studio's video extension, the input's last frames are VAE-encoded and become
the history that forward (F1) sections continue from; the input's first frame (or a given
image) is the start frame and the SigLIP reference. A forward section reads 19 history
latents (16 at 4x, 2 at 2x, 1 at 1x): the input counts as the fewest whole sections that
hold them with the start latent's place, ``given_sections`` (2 at window 9: 19 latents,
73 pixel frames), and only those last frames are encoded. A shorter input is encoded whole
and its history zero-padded in front, which is what a forward run's context holds where it
has no history yet. The input must hold at least one section's overlap (4·window − 3
frames), which the first new section blends with as with the section before it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import GenerationConfig
from ..errors import ConfigError, InputError
from ..sampling.sections import HISTORY_FRAMES
from ..video import find_bucket, resize_image
from ..video.mp4_reader import VideoFile, open_video, read_frames
from .frames import FrameSpool, StartingFrames

if TYPE_CHECKING:
    from ..pipeline import FramePackPipeline

FPS_TOLERANCE = 0.01  # 29.97 fps plays as 30; 24 or 60 would change the video's speed


def given_sections(window: int) -> int:
    """Sections an input video counts as: ``ceil(18 / window)``, so that with the start latent's
    place its latents, ``1 + sections·window``, hold the 19 a forward section reads."""
    return math.ceil((HISTORY_FRAMES - 1) / window)


@dataclass(frozen=True)
class SourceVideo:
    """A video file opened for extension; ``size`` is the bucket its frames are fitted to."""

    file: VideoFile
    size: tuple[int, int]
    resize: str

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def first_frame(self) -> np.ndarray:
        return self._fit(self.file.first_frame)

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame, fitted to the bucket, uint8 (H, W, 3), one at a time."""
        return (self._fit(frame) for frame in read_frames(self.path))

    def digest(self) -> str:
        """The file's content (sha256, as short as ``runstate.digest``'s)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:32]

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        return resize_image(frame, self.size[0], self.size[1], self.resize)


def open_source_video(path: Path, config: GenerationConfig) -> SourceVideo:
    """The video at ``path`` checked against ``config`` (its frame rate, enough frames where the file says)."""
    file = open_video(path)
    if file.fps is not None and abs(file.fps - config.fps) > FPS_TOLERANCE * config.fps:
        raise ConfigError(
            f"fps: {path} plays at {file.fps:g} fps but the extension would be made at {config.fps}; "
            f"give fps {round(file.fps)} to keep its speed"
        )
    overlap = 4 * config.window - 3
    if file.frames is not None and file.frames < overlap:
        raise InputError(_too_short(path, file.frames, overlap, config.window))
    size = find_bucket(file.height, file.width, config.resolution)
    return SourceVideo(file, size, config.resize)


def seed_from_video(
    pipeline: FramePackPipeline, source: SourceVideo, config: GenerationConfig, spool_dir: Path
) -> tuple[StartingFrames, torch.Tensor]:
    """Spool the video's frames into ``spool_dir`` and encode its last ones: the starting frames
    and the history [1, 16, 1 + given_sections·window, h, w] (zero-padded in front when short)."""
    window = config.window
    latents = 1 + given_sections(window) * window
    overlap = 4 * window - 3
    spool = FrameSpool(spool_dir, overlap, keep=4 * latents - 3)
    spool.add_all(source.frames())
    if spool.count < overlap:
        raise InputError(_too_short(source.path, spool.count, overlap, window))
    tail = spool.recent
    encoded = min(latents, (len(tail) + 3) // 4)  # a clip of 4k - 3 frames encodes to k latents
    clip = np.stack(tail[len(tail) - (4 * encoded - 3) :])
    history = pipeline.encode_frames(clip, config).cpu()
    if encoded < latents:
        pad = history.new_zeros(*history.shape[:2], latents - encoded, *history.shape[3:])
        history = torch.cat([pad, history], dim=2)
    return spool.finish(), history


def _too_short(path: Path, frames: int, overlap: int, window: int) -> str:
    return (
        f"video file {str(path)!r} has {frames} frame(s); continuing it needs at least {overlap} "
        f"(4·window − 3 at window {window}: the overlap its last frames blend over)"
    )
