"""mp4 output read back with PyAV; latent preview strips."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from framepack.errors import ConfigError, InputError, OutputExistsError
from framepack.video import Mp4Writer, latent_preview_image, write_mp4

HEIGHT, WIDTH = 64, 96
FRAME_COUNT = 4 * 3 - 3  # 4T - 3 pixel frames for T = 3 latent frames


def smooth_frames(count: int = FRAME_COUNT) -> np.ndarray:
    """Slow gradients: little for yuv420p subsampling or H.264 to lose."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    frames = [np.stack([60 + x + 2 * t, 80 + y + 3 * t, 200 - 0.5 * (x + y) - t], axis=-1) for t in range(count)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def read_back(path: Path) -> tuple[np.ndarray, av.video.stream.VideoStream, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
        return frames, stream.average_rate, stream.codec_context.profile


def yuv420p_round_trip(frames: np.ndarray) -> np.ndarray:
    """What a perfect yuv420p codec returns: the RGB -> yuv420p -> RGB conversion alone
    (up to 4 levels off on these frames: chroma subsampling and 8-bit limited-range YUV)."""
    converted = [av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p") for frame in frames]
    return np.stack([frame.to_ndarray(format="rgb24") for frame in converted])


# measured on these frames: crf 16 max 7 / mean 0.75 from the round trip; crf 0 max 5 / mean 0.08
@pytest.mark.parametrize(("crf", "max_error", "mean_codec_error"), [(16, 8, 1.5), (0, 5, 0.25)])
def test_written_video_reads_back(tmp_path: Path, crf: int, max_error: int, mean_codec_error: float) -> None:
    frames = smooth_frames()
    with Mp4Writer(tmp_path / "v.mp4", fps=30, crf=crf) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == FRAME_COUNT
    decoded, rate, profile = read_back(tmp_path / "v.mp4")
    assert decoded.shape == (FRAME_COUNT, HEIGHT, WIDTH, 3)
    assert rate == Fraction(30)
    assert profile == "High"  # crf 0 too: never the hardly playable "High 4:4:4 Predictive"
    assert np.abs(decoded.astype(int) - frames).max() <= max_error
    assert np.abs(decoded.astype(int) - yuv420p_round_trip(frames)).mean() <= mean_codec_error


def test_crf_0_is_closer_than_crf_16(tmp_path: Path) -> None:
    frames = smooth_frames()
    errors = []
    for crf in (0, 16):
        write_mp4(tmp_path / f"{crf}.mp4", frames, crf=crf)
        errors.append(np.abs(read_back(tmp_path / f"{crf}.mp4")[0].astype(int) - frames).mean())
    assert errors[0] < errors[1]


def test_write_mp4_takes_an_iterable_and_fps(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "g.mp4", (frame for frame in smooth_frames(5)), fps=24)
    decoded, rate, _ = read_back(path)
    assert len(decoded) == 5 and rate == Fraction(24)


def test_error_inside_the_block_leaves_the_file_that_was_there(tmp_path: Path) -> None:
    """The video appears only when complete: an error mid-video keeps the old file and leaves no temporary one."""
    write_mp4(tmp_path / "p.mp4", smooth_frames(2))
    before = (tmp_path / "p.mp4").read_bytes()
    with pytest.raises(RuntimeError, match="boom"), Mp4Writer(tmp_path / "p.mp4") as writer:
        writer.write_all(smooth_frames(5)[:3])
        raise RuntimeError("boom")
    assert (tmp_path / "p.mp4").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.mp4"]


def test_a_new_video_keeps_a_file_that_appears_while_it_is_encoded(tmp_path: Path) -> None:
    path = tmp_path / "n.mp4"

    def frames_then_a_users_file():  # type: ignore[no-untyped-def]
        yield from smooth_frames(3)
        path.write_bytes(b"the user's own video")  # before the encoder is flushed and the file published

    with pytest.raises(OutputExistsError, match=r"exists \(it is left as it was\)"):
        write_mp4(path, frames_then_a_users_file(), overwrite=False)
    assert path.read_bytes() == b"the user's own video"
    assert [p.name for p in tmp_path.iterdir()] == ["n.mp4"]

    path.unlink()
    write_mp4(path, smooth_frames(3), overwrite=False)
    assert len(read_back(path)[0]) == 3


def test_bad_frames_and_settings(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="even"):
        write_mp4(tmp_path / "odd.mp4", [np.zeros((63, 96, 3), np.uint8)])
    with pytest.raises(InputError, match="uint8"):
        write_mp4(tmp_path / "f.mp4", [np.zeros((64, 96, 3), np.float32)])
    with pytest.raises(InputError, match="64x96"):
        write_mp4(tmp_path / "m.mp4", [np.zeros((64, 96, 3), np.uint8), np.zeros((64, 98, 3), np.uint8)])
    with pytest.raises(InputError, match="no frames"):
        write_mp4(tmp_path / "none.mp4", [])
    for crf in (-1, 52, 1.5, True):
        with pytest.raises(ConfigError, match="crf"):
            Mp4Writer(tmp_path / "c.mp4", crf=crf)
    with pytest.raises(ConfigError, match="fps"):
        Mp4Writer(tmp_path / "c.mp4", fps=0)


def test_latent_preview_strip(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    strip = latent_preview_image(frames, tmp_path / "preview.png")
    assert strip.shape == (4, 15, 3)
    for t in range(3):
        np.testing.assert_array_equal(strip[:, 5 * t : 5 * (t + 1)], frames[t])
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "preview.png")), strip)
    with pytest.raises(InputError, match="uint8"):
        latent_preview_image(frames.astype(np.float32))
