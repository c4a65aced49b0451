"""Turn whatever image a user hands us into one uint8 RGB array (H, W, 3).

Alpha is dropped, not composited: the official app receives its image from gradio's
``Image(type="numpy")``, which calls PIL ``convert("RGB")`` and so keeps the colour under
transparent pixels. Dropping it the same way means one file gives one video in both.
Composite onto a background yourself first if the transparent area should be, say, white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

ImageSource = str | Path | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def load_image(source: ImageSource) -> np.ndarray:
    """Load a path, PIL image or array as a fresh uint8 (H, W, 3) RGB array.

    Accepted: RGB/RGBA/grey/palette/16-bit files and PIL images (EXIF orientation applied),
    uint8 or uint16 arrays shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
    """
    if isinstance(source, (str, Path)):
        return _pil_to_rgb(_open_file(Path(source)))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    raise InputError(f"image must be a file path, a PIL image or a numpy array; got {type(source).__name__}")


def describe(value: object) -> str:
    """How an error message names what it got: dtype and shape for arrays, else the type."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def _open_file(path: Path) -> Image.Image:
    if not path.exists():
        raise InputError(f"image file {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"image path {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"image file {str(path)!r} is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, while the file is open, so truncation surfaces here
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"image file {str(path)!r} is not a readable image: {error}") from error


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    if image.width == 0 or image.height == 0:
        raise InputError(f"image has zero size ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        return _array_to_rgb(np.asarray(image).astype(np.uint16))
    if image.mode == "I":
        # 32-bit integer mode is how some Pillow versions open 16-bit greyscale PNGs.
        return _array_to_rgb(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
    if image.mode == "F":
        raise InputError("floating-point images (PIL mode 'F') have no fixed range; convert to 8-bit first")
    try:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as error:  # unloadable data, or a mode PIL cannot turn into RGB
        raise InputError(f"cannot read a {image.mode!r} image as RGB: {error}") from error


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        raise InputError(f"image array is empty (shape {array.shape})")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    array = _to_uint8(array)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.copy()
    if array.dtype == np.uint16:
        # 16-bit full range -> 8-bit full range: round(x * 255 / 65535) == round(x / 257);
        # 257 is odd so x / 257 never ends in exactly .5 and floor(x / 257 + 0.5) is exact.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise InputError(
        f"image array must be uint8 (or uint16 for 16-bit images); got dtype {array.dtype}. "
        "For floats in [0, 1] use (x * 255).round().astype(np.uint8)."
    )
