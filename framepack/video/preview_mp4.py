"""A preview mp4 of the video so far, encoded on a worker thread while generation goes on.

Re-encoding the whole video after every section on the generating thread makes the GPU wait
for the CPU, longer with every section. ``PreviewWriter.submit`` hands the frames to one worker
thread and returns at once. An mp4 cannot be appended to once closed (and inverted mode puts
each section in front of the video anyway), so every preview is a whole new encode: into
``<name>.partial.mp4``, then renamed over ``<name>.mp4``. The preview file is therefore always
complete: the latest preview that finished. At most one preview waits: a newer one replaces a
waiting one (the one being encoded runs to its end), so however slow the encoder, the preview
falls at most one section behind the one being encoded and no backlog builds up.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError
from .mp4 import write_mp4

EncodeFn = Callable[..., Path]  # called as write_mp4 is: (path, frames, fps=..., crf=...)


class _Stopped(Exception):
    """Raised into an encode in progress when the writer is closed without finishing."""


class PreviewWriter:
    """Encodes previews to ``path`` on a worker thread; ``close`` it when the generation ends.

    An encoder error is raised, as an ``OutputError`` naming the file, by the next ``submit``
    or ``wait`` (or handed back by ``close``). ``encode`` replaces ``write_mp4`` (tests).
    """

    def __init__(self, path: str | Path, *, fps: float, crf: int, encode: EncodeFn | None = None) -> None:
        self.path = Path(path)
        self._partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        self._fps = fps
        self._crf = crf
        self._encode = write_mp4 if encode is None else encode
        self._changed = threading.Condition()  # guards every field below
        self._waiting: Iterable[np.ndarray] | None = None
        self._encoding = False
        self._error: OutputError | None = None
        self._closed = False
        self._stop = threading.Event()  # stops the encode in progress (read between frames, without the lock)
        self._thread: threading.Thread | None = None

    def submit(self, frames: Iterable[np.ndarray]) -> None:
        """Make ``frames`` (every frame of the video so far, read on the worker) the next preview.

        ``frames`` must not change when more sections arrive (``FrameAssembler.frames`` does not).
        """
        with self._changed:
            self._raise_error()
            if self._closed:
                raise InputError(f"the preview writer for {self.path} is closed")
            self._waiting = frames
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="framepack-preview", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def wait(self) -> Path:
        """Block until the latest submitted preview is in ``path``, and return ``path``."""
        with self._changed:
            self._changed.wait_for(lambda: self._waiting is None and not self._encoding)
            self._raise_error()
        return self.path

    def close(self, *, finish: bool = False) -> OutputError | None:
        """Stop the worker thread and join it; calling it again does nothing more.

        With ``finish`` the waiting preview is written first; without, it is dropped and the
        encode in progress stops between two frames (``path`` keeps the preview before it).
        Returns the encoder error not raised yet, if any, instead of raising it: close also
        runs while another error is on its way out.
        """
        with self._changed:
            self._closed = True
            if not finish:
                self._waiting = None
                self._stop.set()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._changed:
            error, self._error = self._error, None
        return error

    def publish(self, video: Path) -> None:
        """Make ``path`` a copy of the finished ``video``, which supersedes every preview (after ``close``)."""
        if self._thread is not None and self._thread.is_alive():
            raise InputError(f"close the preview writer for {self.path} before publishing the video")
        try:
            shutil.copyfile(video, self._partial)
            os.replace(self._partial, self.path)
        except OSError as error:
            raise OutputError(f"could not write the preview {self.path}: {error}") from error

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting is not None or self._closed)
                if self._waiting is None:
                    return
                frames, self._waiting = self._waiting, None
                self._encoding = True
            try:
                self._write(frames)
            finally:
                with self._changed:
                    self._encoding = False
                    self._changed.notify_all()

    def _write(self, frames: Iterable[np.ndarray]) -> None:
        try:
            self._encode(self._partial, self._until_stopped(frames), fps=self._fps, crf=self._crf)
            os.replace(self._partial, self.path)
        except _Stopped:
            self._partial.unlink(missing_ok=True)
        except Exception as cause:
            self._partial.unlink(missing_ok=True)
            error = OutputError(f"could not write the preview {self.path}: {cause}")
            error.__cause__ = cause
            with self._changed:
                self._error = self._error or error  # the first error is the one to explain

    def _until_stopped(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            if self._stop.is_set():
                raise _Stopped
            yield frame
