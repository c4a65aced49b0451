"""H.264 mp4 output through PyAV, one uint8 frame at a time (the encoder holds the rest).

Settings match the reference's ``save_bcthw_as_mp4`` (torchvision ``write_video``): libx264,
yuv420p, ``crf`` as an x264 option, frames built with ``VideoFrame.from_ndarray(format="rgb24")``
and converted to yuv420p by PyAV, then flushed.

The crf becomes libx264 options in ``x264.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from fractions import Fraction
from numbers import Real
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from ..atomic import commit, discard, partial_path, write_error
from ..errors import ConfigError, InputError
from .images import describe
from .x264 import encoder_options

logger = logging.getLogger("framepack")


class Mp4Writer:
    """Stream uint8 (H, W, 3) RGB frames into an H.264 mp4; use as a context manager.

    The file is opened on the first frame (its size fixes the video size). Width and height
    must be even (yuv420p); buckets always are. ``path`` gets the video only when ``close``
    succeeds; an error (an ``OutputError`` for the file system's) leaves ``path`` untouched.
    ``metadata`` are container tags (``comment``, ``title``…: the ones an mp4 keeps as they are).
    ``overwrite=False``: a file at ``path`` when the video is finished is kept, and ``close``
    raises OutputExistsError (``framepack.atomic.commit``).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float = 30,
        crf: int = 16,
        *,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = True,
    ) -> None:
        if isinstance(fps, bool) or not isinstance(fps, Real) or fps <= 0:
            raise ConfigError(f"fps must be a positive number; got {fps!r}")
        self.path = Path(path)
        self.fps = fps
        self._options = encoder_options(crf)
        self._metadata = dict(metadata or {})
        self._overwrite = overwrite
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._size: tuple[int, int] | None = None
        self._temp = partial_path(self.path)
        self.frames_written = 0
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        """Encode one uint8 (H, W, 3) RGB frame."""
        if self._closed:
            raise InputError(f"cannot write to {str(self.path)!r}: the writer is closed")
        frame = _check_frame(frame, self._size)
        try:
            if self._stream is None:
                self._open(frame.shape[0], frame.shape[1])
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        except OSError as error:
            self._abandon()
            raise write_error(self.path, error) from error
        self.frames_written += 1

    def write_all(self, frames: Iterable[np.ndarray]) -> None:
        """Encode frames one by one (an array (T, H, W, 3) iterates as frames)."""
        for frame in frames:
            self.write(frame)

    def close(self) -> None:
        """Flush the encoder and finish the file. Raises InputError if no frame was written."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            raise InputError(f"no frames were written to {str(self.path)!r}; an mp4 needs at least one")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except OSError as error:
            self._abandon()
            raise write_error(self.path, error) from error
        except BaseException:
            self._abandon()
            raise
        commit(self._temp, self.path, overwrite=self._overwrite)
        logger.debug("wrote %d frames to %s", self.frames_written, self.path)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # An error is on its way out: drop the unfinished video, keep whatever ``path`` held.
        self._abandon()

    def _abandon(self) -> None:
        """Close without finishing the file and remove it; ``path`` is never touched."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                logger.debug("closing the unfinished %s failed too", self._temp, exc_info=True)
        discard(self._temp)

    def _open(self, height: int, width: int) -> None:
        self._container = av.open(str(self._temp), mode="w")
        self._container.metadata.update(self._metadata)  # before the header is written with the first packet
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = self._options
        self._stream = stream
        self._size = (height, width)


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 30,
    crf: int = 16,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write uint8 (H, W, 3) frames (any iterable, or a (T, H, W, 3) array) to an mp4; returns the path."""
    with Mp4Writer(path, fps=fps, crf=crf, metadata=metadata, overwrite=overwrite) as writer:
        writer.write_all(frames)
    return writer.path


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"video frames must be uint8 (H, W, 3) RGB arrays; got {describe(frame)}")
    height, width = frame.shape[:2]
    if size is None and (height % 2 or width % 2 or height == 0 or width == 0):
        raise InputError(f"H.264 yuv420p needs even, non-zero width and height; got {height}x{width} (H x W)")
    if size is not None and (height, width) != size:
        raise InputError(f"every frame must be {size[0]}x{size[1]} (H x W) like the first; got {height}x{width}")
    return np.ascontiguousarray(frame)
