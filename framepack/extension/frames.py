"""The frames an extension starts from, put in its run directory as a forward run leaves them.

A forward ``FrameAssembler`` keeps a video as uint8 chunk files plus its last ``overlap``
frames held as float32 for the next section's blend. An extension's run directory starts the
same way, so that it continues, and resumes, as any forward run does:

- from a forward run, its chunk files are copied and its held float frames taken as they are
  (bit for bit what that run would have blended next);
- from a video file or an inverted run, the frames (uint8) are spooled in temporal order and
  the last ``overlap`` become the held frames, as float32 ``x / 127.5 - 1``, which
  ``pixels_to_uint8`` turns back into the same uint8 values.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import copy_file, replacing
from ..errors import InputError, OutputError
from ..video.blending import chunk_name

CHUNK_FRAMES = 36  # frames per spooled chunk file: what a forward section finishes at window 9 (40 MB at 640 px)


@dataclass(frozen=True)
class StartingFrames:
    """What a forward run's state says of its frames (``held_frames``, ``frame_count``, ``frame_chunks``)."""

    chunk_names: list[str]
    held: torch.Tensor  # float32 [3, overlap, H, W]
    frame_count: int


def copy_chunks(source_dir: Path, chunk_names: list[str], spool_dir: Path) -> None:
    """Copy a run's finished-frame chunks into ``spool_dir`` (the source is only read)."""
    _make(spool_dir)
    for name in chunk_names:
        copy_file(source_dir / name, spool_dir / name)


class FrameSpool:
    """Frames in temporal order into ``spool_dir``; the last ``overlap`` are held back as float.

    ``keep`` frames (at least ``overlap``) stay in memory until ``finish``, for the caller to
    read as ``recent`` (a video's tail to encode); older ones go to chunk files as they come.
    """

    def __init__(self, spool_dir: Path, overlap: int, keep: int = 0) -> None:
        _make(spool_dir)
        self.spool_dir = spool_dir
        self.overlap = overlap
        self.count = 0
        self._keep = max(keep, overlap)
        self._recent: deque[np.ndarray] = deque()
        self._pending: list[np.ndarray] = []
        self._chunks: list[str] = []

    def add_all(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self.add(frame)

    def add(self, frame: np.ndarray) -> None:
        self._recent.append(frame)
        self.count += 1
        if len(self._recent) > self._keep:
            self._pending.append(self._recent.popleft())
            if len(self._pending) == CHUNK_FRAMES:
                self._flush()

    @property
    def recent(self) -> list[np.ndarray]:
        """The last ``keep`` frames added (all of them when fewer came), in temporal order."""
        return list(self._recent)

    def finish(self) -> StartingFrames:
        """Write all but the last ``overlap`` frames; those become the held float frames."""
        if self.count < self.overlap:
            raise InputError(f"expected at least {self.overlap} frames to continue from, got {self.count}")
        recent = list(self._recent)
        split = len(recent) - self.overlap
        for frame in recent[:split]:
            self._pending.append(frame)
            if len(self._pending) == CHUNK_FRAMES:
                self._flush()
        self._flush()
        held = torch.from_numpy(np.stack(recent[split:])).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return StartingFrames(list(self._chunks), held.contiguous(), self.count)

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk = self.spool_dir / chunk_name(len(self._chunks))
        with replacing(chunk) as temp:
            np.save(temp, np.stack(self._pending))
        self._chunks.append(chunk.name)
        self._pending = []


def _make(spool_dir: Path) -> None:
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"could not create {spool_dir}: {error.strerror or error}") from error


def clear(spool_dir: Path) -> None:
    """Remove frames spooled for an extension that could not start (the folder is the run's own)."""
    shutil.rmtree(spool_dir, ignore_errors=True)
