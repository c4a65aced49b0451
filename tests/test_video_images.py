"""load_image: every kind of input becomes uint8 (H, W, 3) RGB, bad input says what is wrong."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepack.errors import InputError
from framepack.video import load_image


def test_rgb_file_and_pil_and_array_agree(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    for source in (tmp_path / "x.png", str(tmp_path / "x.png"), Image.fromarray(pixels), pixels):
        loaded = load_image(source)
        assert loaded.dtype == np.uint8 and loaded.shape == (5, 7, 3)
        np.testing.assert_array_equal(loaded, pixels)
    assert load_image(pixels) is not pixels  # a fresh array, never an alias of the caller's


def test_alpha_is_dropped_like_gradio(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]]
    rgba[0, 0, 3] = 0  # fully transparent: its colour is kept, not replaced by a background
    rgba[1:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    for source in (tmp_path / "a.png", rgba):
        np.testing.assert_array_equal(load_image(source), rgba[..., :3])
    la = Image.fromarray(np.array([[[7, 0], [9, 255]]], dtype=np.uint8), "LA")
    np.testing.assert_array_equal(load_image(la), [[[7, 7, 7], [9, 9, 9]]])


def test_grey_palette_and_single_channel() -> None:
    grey = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(load_image(grey), expected)
    np.testing.assert_array_equal(load_image(grey[:, :, None]), expected)
    np.testing.assert_array_equal(load_image(Image.fromarray(grey, "L")), expected)
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([1, 0])
    np.testing.assert_array_equal(load_image(palette), [[[0, 0, 255], [255, 0, 0]]])


def test_sixteen_bit_grey_scales_to_full_range(tmp_path: Path) -> None:
    # round(x / 257): 65535 -> 255, 25700 -> 100, 32896 -> 128, 128 -> 0 (0.498), 129 -> 1 (0.502)
    wide = np.array([[65535, 25700, 32896, 128, 129, 0]], dtype=np.uint16)
    expected = np.repeat(np.array([[255, 100, 128, 0, 1, 0]], dtype=np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(wide).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    for source in (tmp_path / "g16.png", wide, Image.fromarray(wide)):
        np.testing.assert_array_equal(load_image(source), expected)


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    wide = np.array([[[65535, 0, 25700], [32896, 1000, 51400]]], dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png_rgb16(wide))
    loaded = load_image(tmp_path / "rgb16.png")
    assert loaded.shape == (1, 2, 3)
    assert np.abs(loaded.astype(int) - wide / 257).max() <= 1  # PIL keeps the high byte


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 20 high, 40 wide as stored
    stored[:, :20] = [255, 0, 0]  # left half red
    stored[:, 20:] = [0, 0, 255]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored left becomes displayed top
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.shape == (40, 20, 3)
    assert loaded[5, 10, 0] > 200 and loaded[5, 10, 2] < 50  # top is red
    assert loaded[35, 10, 2] > 200 and loaded[35, 10, 0] < 50  # bottom is blue


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: _write(d / "text.png", b"this is not a picture\n"), "not a readable image"),
        (lambda d: _write(d / "empty.png", b""), "empty"),
        (lambda d: d, "not a file"),
        (lambda d: _write(d / "cut.png", _truncated_png()), "not a readable image"),
    ],
)
def test_bad_files(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_image(make(tmp_path))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.float32), "float32"),
        (np.zeros((4, 4, 3), np.int64), "int64"),
        (np.zeros((4, 4, 2), np.uint8), r"\(4, 4, 2\)"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"\(2, 4, 4, 3\)"),
    ],
)
def test_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_image(array)


def test_bad_types() -> None:
    with pytest.raises(InputError, match="list"):
        load_image([[0, 0, 0]])
    with pytest.raises(InputError, match="'F'"):
        load_image(Image.new("F", (2, 2)))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_png() -> bytes:
    noise = np.random.default_rng(1).integers(0, 65536, (16, 16, 3)).astype(np.uint16)
    whole = _png_rgb16(noise)
    return whole[: len(whole) // 2]


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A minimal 16-bit RGB PNG (PIL cannot write one)."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
