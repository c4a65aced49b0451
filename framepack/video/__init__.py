"""Video I/O: image input, resolution buckets, resizing, section blending, mp4 and previews."""

from __future__ import annotations

from .blending import BLEND_MODES, FrameAssembler, SectionBlender, pixels_to_uint8
from .buckets import BASE_RESOLUTION, BUCKETS_640, check_resolution, find_bucket
from .images import ImageSource, load_image
from .mp4 import MAX_CRF, Mp4Writer, encoder_options, write_mp4
from .preview import latent_preview_image
from .preview_mp4 import PreviewWriter
from .resize import RESIZE_METHODS, resize_image

__all__ = [
    "BASE_RESOLUTION",
    "BLEND_MODES",
    "BUCKETS_640",
    "MAX_CRF",
    "RESIZE_METHODS",
    "FrameAssembler",
    "ImageSource",
    "Mp4Writer",
    "PreviewWriter",
    "SectionBlender",
    "check_resolution",
    "encoder_options",
    "find_bucket",
    "latent_preview_image",
    "load_image",
    "pixels_to_uint8",
    "resize_image",
    "write_mp4",
]
