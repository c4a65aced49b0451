"""Fit an image to a bucket: crop (the official way), stretch, or pad (letterbox)."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from PIL import Image

from ..errors import ConfigError, InputError
from .images import describe

RESIZE_METHODS = ("crop", "stretch", "pad")


def resize_image(image: np.ndarray, height: int, width: int, method: str = "crop") -> np.ndarray:
    """Resize a uint8 (H, W, 3) image to exactly (height, width, 3).

    - ``crop``: cover the target and cut the centre; exactly the reference's
      ``resize_and_center_crop`` (the image itself is returned when already the right size).
    - ``stretch``: LANCZOS to the target size, aspect not kept (what kijai's workflow does;
      it distorts motion at low resolution).
    - ``pad``: fit inside the target keeping aspect, centred on black. Black, not edge
      replication: smeared edge pixels invite the model to animate them, flat bars do not.
    """
    _check_image(image)
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value <= 0:
            raise InputError(f"target {name} must be a positive int; got {value!r}")
    if method == "crop":
        return _resize_and_center_crop(image, int(width), int(height))
    if method == "stretch":
        return np.array(Image.fromarray(image).resize((int(width), int(height)), Image.Resampling.LANCZOS))
    if method == "pad":
        return _fit_and_pad(image, int(width), int(height))
    raise ConfigError(f"resize method must be one of {RESIZE_METHODS}; got {method!r}")


def _resize_and_center_crop(image: np.ndarray, target_width: int, target_height: int) -> np.ndarray:
    original_height, original_width = image.shape[:2]
    if (original_height, original_width) == (target_height, target_width):
        return image
    scale = max(target_width / original_width, target_height / original_height)
    resized_width = round(original_width * scale)
    resized_height = round(original_height * scale)
    resized = Image.fromarray(image).resize((resized_width, resized_height), Image.Resampling.LANCZOS)
    # Float box as the reference passes it; PIL rounds each coordinate (half to even).
    left = (resized_width - target_width) / 2
    top = (resized_height - target_height) / 2
    right = (resized_width + target_width) / 2
    bottom = (resized_height + target_height) / 2
    return np.array(resized.crop((left, top, right, bottom)))


def _fit_and_pad(image: np.ndarray, target_width: int, target_height: int) -> np.ndarray:
    original_height, original_width = image.shape[:2]
    scale = min(target_width / original_width, target_height / original_height)
    fitted_width = min(target_width, max(1, round(original_width * scale)))
    fitted_height = min(target_height, max(1, round(original_height * scale)))
    fitted = Image.fromarray(image).resize((fitted_width, fitted_height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    canvas.paste(fitted, ((target_width - fitted_width) // 2, (target_height - fitted_height) // 2))
    return np.array(canvas)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"resize_image needs a uint8 (H, W, 3) array (see load_image); got {describe(image)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"cannot resize an empty image of shape {image.shape}")
