"""What a generation hands back: one ``SectionOutput`` per finished section, one ``VideoResult`` at the end."""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import copy_file, exists_error
from .cache.base import SectionStats
from .errors import InputError
from .run_settings import mp4_metadata
from .video import FrameAssembler, write_mp4

VIDEO_SUFFIXES = (".mp4",)  # what write_mp4 writes; compared case-insensitively


@dataclass(frozen=True)
class SectionOutput:
    """One finished section.

    latents      the latents this section added, in temporal order [1, 16, t, h, w]
    frames       this section's decoded frames, uint8 [n, H, W, 3] (before overlap blending)
    video_frames frames of the video so far
    preview      the preview mp4 of the video so far; it is encoded in the background, so it may still
                 show an earlier section: ``GenerationRun.wait_for_preview()`` waits for this one
    seconds      time this section spent sampling; elapsed: since the run started (all work)
    cache_stats  the cache policy's calls computed and skipped in this section (None: no cache)
    """

    index: int
    num_sections: int
    latents: torch.Tensor
    frames: np.ndarray
    video_frames: int
    preview: Path
    seconds: float
    elapsed: float
    cache_stats: SectionStats | None = None

    @property
    def is_last(self) -> bool:
        return self.index == self.num_sections - 1


class VideoResult:
    """A finished video: its latents, and its frames spooled as uint8 in the run directory.

    A temporary run directory (the run was given no ``run_dir``) is deleted by ``save``
    unless ``keep_run_dir=True``, by ``cleanup``, or when the result is garbage-collected
    (or the interpreter exits) without either: nothing can reach it then, and videos left
    behind would fill the temporary folder. ``save(keep_run_dir=True)``, or a ``save`` that
    fails, hands it to the caller for good. A ``run_dir`` the caller gave is never deleted.
    Every mp4 saved carries ``settings`` in its metadata (``framepack.run_settings``).
    """

    def __init__(
        self,
        latents: torch.Tensor,
        frames: FrameAssembler,
        run_dir: Path,
        fps: int,
        crf: int,
        *,
        temporary: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.latents = latents
        self.settings = settings  # the run's settings record (framepack.run_settings), carried by every mp4 saved
        self.run_dir = run_dir
        self.fps = fps
        self.crf = crf
        self.temporary = temporary
        self._frames = frames
        self._deleted = False
        self._drop_when_unreachable = weakref.finalize(self, shutil.rmtree, run_dir, True) if temporary else None

    @property
    def num_frames(self) -> int:
        return len(self._frames)

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame, uint8 (H, W, 3), in temporal order, read from disk one chunk at a time."""
        self._check_kept()
        return self._frames.frames()

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        crf: int | None = None,
        keep_run_dir: bool = False,
        overwrite: bool = True,
    ) -> Path:
        """Write the video as an H.264 mp4 (the run's crf unless given); returns the path.

        The file appears only when complete (an existing one is replaced then, not before).
        ``overwrite=False`` keeps a file at ``path``, even one that appears while the video is
        written: OutputExistsError (an InputError) then, and the video may be saved elsewhere.
        Then a temporary run directory is deleted, unless ``keep_run_dir``.
        """
        target = self._check_target(path, overwrite)
        self._check_kept()
        final = self.run_dir / "video.mp4"
        try:
            if (crf is None or crf == self.crf) and final.exists():
                copy_file(final, target, overwrite=overwrite)
            else:
                write_mp4(
                    target,
                    self.frames(),
                    fps=self.fps,
                    crf=self.crf if crf is None else crf,
                    metadata=self._metadata(crf),
                    overwrite=overwrite,
                )
        except BaseException:
            self._keep_run_dir()  # the video exists only there now (a full disk, an interrupt): never drop it
            raise
        if keep_run_dir:
            self._keep_run_dir()
        else:
            self.cleanup()
        return target

    def _metadata(self, crf: int | None) -> dict[str, str] | None:
        """The mp4 tags of ``settings``, with the crf this file is encoded at."""
        if self.settings is None:
            return None
        record = self.settings
        if crf is not None:
            record = record | {"config": record["config"] | {"crf": crf}}
        return mp4_metadata(record)

    def _keep_run_dir(self) -> None:
        """The run directory outlives this result: it is the caller's to keep or delete."""
        if self._drop_when_unreachable is not None:
            self._drop_when_unreachable.detach()

    def cleanup(self) -> None:
        """Delete the run directory if it is a temporary one; a given ``run_dir`` is kept."""
        if self.temporary and not self._deleted:
            self._deleted = True
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _check_kept(self) -> None:
        if self._deleted:
            raise InputError(
                f"the frames were in the temporary run directory {self.run_dir}, deleted after save() "
                "(pass keep_run_dir=True to keep it) or cleanup()"
            )

    def _check_target(self, path: object, overwrite: bool) -> Path:
        """Refuse, before anything is written, a path the video cannot or must not go to."""
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str) or not os.fspath(path):
            raise InputError(f"save: expected a file path ending in .mp4; got {path!r:.60}")
        target = Path(path)
        if target.suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(f"save: expected a file path ending in .mp4 (the one format written); got {str(target)!r}")
        if target.is_dir():
            raise InputError(f"save: {target} is a folder; expected a file path ending in .mp4")
        if not target.parent.is_dir():
            raise InputError(f"save: expected a file in an existing folder, but {target.parent} does not exist")
        if target.resolve().is_relative_to(self.run_dir.resolve()):
            raise InputError(
                f"save: {target} is inside the run directory {self.run_dir}, whose files the run manages; "
                "save the video somewhere else"
            )
        if not overwrite and os.path.lexists(target):
            raise exists_error(target, "or pass overwrite=True", what="save")
        return target
