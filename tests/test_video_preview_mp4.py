"""PreviewWriter: previews encoded on a worker thread, newest first, errors raised on the caller's thread.

The fake encoders block on events, never on sleeps: each test says exactly when an encode may end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from framepack.errors import FramePackError, OutputError
from framepack.video import PreviewWriter

WAIT = 60  # seconds; only reached when something is broken


def video(count: int) -> list[np.ndarray]:
    return [np.full((2, 2, 3), i, np.uint8) for i in range(count)]


class GatedEncoder:
    """Writes the frame count as the file's text; each encode waits until the test opens the gate.

    With ``fail_first`` the first encode fails after writing.
    """

    def __init__(self, fail_first: bool = False) -> None:
        self.started: list[int] = []  # frame counts, in the order encodes began
        self.began = threading.Semaphore(0)
        self.gate = threading.Event()
        self.fail_first = fail_first

    def __call__(self, path: Path, frames: Iterable[np.ndarray], *, fps: float, crf: int) -> Path:
        frames = list(frames)
        self.started.append(len(frames))
        self.began.release()
        assert self.gate.wait(WAIT)
        path.write_text(str(len(frames)))  # the partial file: a failed encode leaves one behind
        if self.fail_first and len(self.started) == 1:
            raise RuntimeError("disk full")
        return path


def preview_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "framepack-preview"]


def test_submit_returns_at_once_and_the_newest_waiting_preview_wins(tmp_path: Path) -> None:
    encoder = GatedEncoder()
    writer = PreviewWriter(tmp_path / "preview.mp4", fps=30, crf=16, encode=encoder)
    writer.submit(video(1))
    assert encoder.began.acquire(timeout=WAIT)  # encoding 1 frame, held at the gate
    writer.submit(video(2))  # waits ...
    writer.submit(video(3))  # ... and is replaced before it starts
    assert not (tmp_path / "preview.mp4").exists()
    encoder.gate.set()
    assert writer.wait() == tmp_path / "preview.mp4"
    assert encoder.started == [1, 3]
    assert (tmp_path / "preview.mp4").read_text() == "3"
    assert not (tmp_path / "preview.partial.mp4").exists()
    assert writer.close() is None and not preview_threads()


def test_an_encoder_error_is_raised_on_the_next_submit_naming_the_file(tmp_path: Path) -> None:
    encoder = GatedEncoder(fail_first=True)
    writer = PreviewWriter(tmp_path / "preview.mp4", fps=30, crf=16, encode=encoder)
    writer.submit(video(1))
    assert encoder.began.acquire(timeout=WAIT)
    writer.submit(video(2))
    encoder.gate.set()  # the first encode fails; the worker goes on with the second
    assert encoder.began.acquire(timeout=WAIT)  # so the first one's error is in
    with pytest.raises(OutputError, match="preview.mp4: disk full") as raised:
        writer.submit(video(3))
    assert isinstance(raised.value, FramePackError) and isinstance(raised.value.__cause__, RuntimeError)
    assert writer.wait() == tmp_path / "preview.mp4"  # raised once; the second preview is fine
    assert (tmp_path / "preview.mp4").read_text() == "2"
    assert writer.close() is None and not preview_threads()


def test_wait_raises_the_encoder_error(tmp_path: Path) -> None:
    encoder = GatedEncoder(fail_first=True)
    encoder.gate.set()
    writer = PreviewWriter(tmp_path / "preview.mp4", fps=30, crf=16, encode=encoder)
    writer.submit(video(1))
    with pytest.raises(OutputError, match="preview.mp4: disk full"):
        writer.wait()
    assert not (tmp_path / "preview.partial.mp4").exists()
    assert writer.close() is None and not preview_threads()


def test_close_hands_back_an_error_nobody_raised_yet(tmp_path: Path) -> None:
    def broken(path: Path, frames: Iterable[np.ndarray], *, fps: float, crf: int) -> Path:
        raise RuntimeError("disk full")

    writer = PreviewWriter(tmp_path / "preview.mp4", fps=30, crf=16, encode=broken)
    writer.submit(video(1))
    error = writer.close(finish=True)
    assert isinstance(error, OutputError) and "disk full" in str(error)
    assert writer.close() is None  # handed back once


def test_close_finishing_writes_the_waiting_preview(tmp_path: Path) -> None:
    encoder = GatedEncoder()
    writer = PreviewWriter(tmp_path / "preview.mp4", fps=30, crf=16, encode=encoder)
    writer.submit(video(1))
    assert encoder.began.acquire(timeout=WAIT)
    writer.submit(video(2))
    encoder.gate.set()
    assert writer.close(finish=True) is None
    assert encoder.started == [1, 2] and (tmp_path / "preview.mp4").read_text() == "2"
    assert not preview_threads()


def test_close_stops_the_encode_in_progress_and_keeps_the_last_preview(tmp_path: Path) -> None:
    path = tmp_path / "preview.mp4"
    path.write_text("the previous preview")
    reading = threading.Event()

    def frames() -> Iterable[np.ndarray]:
        yield np.zeros((2, 2, 3), np.uint8)
        reading.set()
        while True:  # endless: only a stop ends this encode
            yield np.zeros((2, 2, 3), np.uint8)

    writer = PreviewWriter(path, fps=30, crf=16)  # the real mp4 encoder
    writer.submit(frames())
    assert reading.wait(WAIT)
    writer.submit(video(2))  # dropped by close
    assert writer.close() is None
    assert path.read_text() == "the previous preview"
    assert not (tmp_path / "preview.partial.mp4").exists()
    assert not preview_threads()


def test_publish_copies_the_finished_video(tmp_path: Path) -> None:
    final = tmp_path / "video.mp4"
    final.write_bytes(b"video")
    writer = PreviewWriter(tmp_path / "preview.mp4", fps=30, crf=16)
    writer.close()
    writer.publish(final)
    assert (tmp_path / "preview.mp4").read_bytes() == b"video"
