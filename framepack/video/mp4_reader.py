"""Reading a video file (any container and codec PyAV decodes) as uint8 RGB frames, one at a time.

Used to continue a video (``framepack.extension``): ``open_video`` checks the file and reads
its first frame and frame rate without decoding the rest; ``read_frames`` streams every frame,
so a long input never sits in memory whole. Whatever PyAV or FFmpeg cannot read becomes an
``InputError`` naming the file. Audio and rotation metadata are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ..errors import InputError

# What PyAV raises for a file FFmpeg cannot demux or decode (FFmpegError covers its error
# codes; a missing or unreadable file is also an OSError).
_READ_ERRORS = (av.error.FFmpegError, OSError, ValueError)


@dataclass(frozen=True)
class VideoFile:
    """A video file that opened and decoded at least one frame.

    fps          the stream's average frame rate (None when the container does not say)
    frames       the frame count the container states (None when it does not; decoding may find fewer)
    first_frame  its first frame, uint8 (H, W, 3) RGB
    """

    path: Path
    fps: float | None
    frames: int | None
    first_frame: np.ndarray

    @property
    def height(self) -> int:
        return self.first_frame.shape[0]

    @property
    def width(self) -> int:
        return self.first_frame.shape[1]


def open_video(path: str | Path) -> VideoFile:
    """Check that ``path`` is a video PyAV can decode; return its rate and first frame."""
    path = _check_file(Path(path))
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        stated = stream.frames or None
    frames = read_frames(path)
    try:
        first = next(frames, None)
    finally:
        frames.close()
    if first is None:
        raise InputError(f"video file {str(path)!r} has a video stream but no frame could be decoded from it")
    return VideoFile(path, float(rate) if rate else None, stated, first)


def read_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Every frame of the file's first video stream, uint8 (H, W, 3) RGB, in presentation order.

    A frame of another size than the first, or a decoding error midway, raises InputError
    naming the frame: a video whose frames are not all alike cannot be continued as one.
    """
    path = _check_file(Path(path))
    with _open(path) as container:
        stream = container.streams.video[0]
        size: tuple[int, int] | None = None
        index = 0
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded, None)
            except _READ_ERRORS as error:
                raise InputError(
                    f"video file {str(path)!r}: frame {index} cannot be decoded: {_reason(error)}"
                ) from error
            if frame is None:
                return
            rgb = frame.to_ndarray(format="rgb24")
            if size is None:
                size = rgb.shape[:2]
            elif rgb.shape[:2] != size:
                raise InputError(
                    f"video file {str(path)!r}: frame {index} is {rgb.shape[0]}x{rgb.shape[1]} (H x W), "
                    f"but the first frame is {size[0]}x{size[1]}; expected one size throughout"
                )
            yield rgb
            index += 1


def _open(path: Path) -> av.container.InputContainer:
    """The opened container, which has a video stream; InputError otherwise."""
    try:
        container = av.open(str(path))
    except _READ_ERRORS as error:
        raise InputError(f"video file {str(path)!r} is not a readable video: {_reason(error)}") from error
    if not container.streams.video:
        container.close()
        raise InputError(f"video file {str(path)!r} has no video stream")
    return container


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"video file {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"video path {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"video file {str(path)!r} is empty (0 bytes)")
    return path


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
