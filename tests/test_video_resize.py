"""Buckets and resize methods against sizes and offsets worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from framepack.errors import ConfigError, InputError
from framepack.video import find_bucket, resize_image

# metric |h*bw - w*bh|, official order, last tie wins.
# 480x640: (544,704) -> |337920-348160| = 10240; (512,768) -> 40960; (576,672) -> 46080.
# 720x1280: (480,832) -> |599040-614400| = 15360; (448,864) -> 48640; (512,768) -> 102400.
# 90x190: (416,960) and (448,864) tie at 7360 (aspect 9/19 is halfway) -> the later wins.
# Scaled (Python round, half to even): 480: 608*0.75/16 = 28.5 -> 28 -> 448; 480*0.75/16 = 22.5 -> 22 -> 352.
# 240: 544*0.375/16 = 12.75 -> 13 -> 208; 704*0.375/16 = 16.5 -> 16 -> 256. 720: 608*1.125/16 = 42.75 -> 688.
HAND_BUCKETS = [
    ((480, 640), 640, (544, 704)),
    ((1000, 1000), 640, (640, 608)),
    ((720, 1280), 640, (480, 832)),
    ((1280, 720), 640, (832, 480)),
    ((90, 190), 640, (448, 864)),
    ((100, 1000), 640, (416, 960)),
    ((1000, 100), 640, (960, 416)),
    ((1000, 1000), 320, (320, 304)),
    ((720, 1280), 320, (240, 416)),
    ((1000, 1000), 480, (480, 448)),
    ((720, 1280), 480, (352, 624)),
    ((480, 640), 240, (208, 256)),
    ((1000, 1000), 720, (720, 688)),
]


@pytest.mark.parametrize(("size", "resolution", "bucket"), HAND_BUCKETS)
def test_find_bucket(size: tuple[int, int], resolution: int, bucket: tuple[int, int]) -> None:
    assert find_bucket(*size, resolution=resolution) == bucket


@pytest.mark.parametrize("resolution", [0, -16, 500, 641, 640.0, True, "640"])
def test_resolution_must_be_positive_multiple_of_16(resolution: object) -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        find_bucket(480, 640, resolution=resolution)


@pytest.mark.parametrize(("height", "width"), [(0, 640), (480, -1), (480.0, 640)])
def test_bad_image_size(height: object, width: object) -> None:
    with pytest.raises(InputError, match="positive ints"):
        find_bucket(height, width)


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * 7 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)


# crop, worked by hand: s = max(tw/W, th/H), rw, rh = round(W*s), round(H*s); box rounded half to even.
# 480x640 -> 544x704: s = 544/480; rw = round(725.33) = 725, rh = 544; left = round(10.5) = 10.
# 1000x1000 -> 640x608: s = 0.64; 640x640; left = 16.
# 720x1280 -> 480x832: s = 480/720; rw = round(853.33) = 853, rh = 480; left = round(10.5) = 10.
@pytest.mark.parametrize(
    ("size", "target", "resized", "offset"),
    [
        ((480, 640), (544, 704), (544, 725), (0, 10)),
        ((1000, 1000), (640, 608), (640, 640), (0, 16)),
        ((720, 1280), (480, 832), (480, 853), (0, 10)),
    ],
)
def test_crop(size, target, resized, offset) -> None:
    image = _noise(*size)
    out = resize_image(image, *target, method="crop")
    assert out.shape == (*target, 3) and out.dtype == np.uint8
    scaled = np.array(Image.fromarray(image).resize(resized[::-1], Image.LANCZOS))
    top, left = offset
    np.testing.assert_array_equal(out, scaled[top : top + target[0], left : left + target[1]])


def test_crop_returns_the_image_when_already_the_size() -> None:
    image = _noise(544, 704)
    assert resize_image(image, 544, 704, method="crop") is image


def test_stretch() -> None:
    image = _noise(480, 640)
    out = resize_image(image, 320, 304, method="stretch")
    np.testing.assert_array_equal(out, np.array(Image.fromarray(image).resize((304, 320), Image.LANCZOS)))


# pad: s = min(tw/W, th/H). 480x640 -> 544x704: s = 1.1, fitted 528x704, 8 black rows above and below.
# 1000x1000 -> 640x608: s = 0.608, fitted 608x608, 16 black rows above and below.
@pytest.mark.parametrize(
    ("size", "target", "fitted", "top"),
    [((480, 640), (544, 704), (528, 704), 8), ((1000, 1000), (640, 608), (608, 608), 16)],
)
def test_pad(size, target, fitted, top) -> None:
    image = _noise(*size)
    out = resize_image(image, *target, method="pad")
    assert out.shape == (*target, 3)
    expected_inner = np.array(Image.fromarray(image).resize(fitted[::-1], Image.LANCZOS))
    np.testing.assert_array_equal(out[top : top + fitted[0]], expected_inner)
    assert not out[:top].any() and not out[top + fitted[0] :].any()


def test_pad_centres_horizontally() -> None:
    # 100x50 (tall) into 64x64: s = 0.64, fitted 64x32, 16 black columns each side.
    out = resize_image(np.full((100, 50, 3), 200, np.uint8), 64, 64, method="pad")
    assert not out[:, :16].any() and not out[:, 48:].any()
    assert (out[:, 16:48] == 200).all()


def test_resize_errors() -> None:
    image = _noise(8, 8)
    with pytest.raises(ConfigError, match="crop"):
        resize_image(image, 16, 16, method="squash")
    with pytest.raises(InputError, match="float32"):
        resize_image(image.astype(np.float32), 16, 16)
    with pytest.raises(InputError, match="height"):
        resize_image(image, 0, 16)
