"""Latent previews as one image strip, laid out like the official UI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .images import describe


def latent_preview_image(frames: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Lay uint8 preview frames [T, H, W, 3] side by side as one (H, T*W, 3) image.

    This is the UI's ``b c t h w -> (b h) (t w) c`` for batch 1. With ``path`` the strip is
    also saved (as PNG for a .png path; PIL picks the format from the suffix).
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise InputError(f"preview frames must be a uint8 [T, H, W, 3] array; got {describe(frames)}")
    if 0 in frames.shape:
        raise InputError(f"preview frames are empty (shape {frames.shape})")
    count, height, width, _ = frames.shape
    strip = np.ascontiguousarray(frames.transpose(1, 0, 2, 3).reshape(height, count * width, 3))
    if path is not None:
        Image.fromarray(strip).save(path)
    return strip
