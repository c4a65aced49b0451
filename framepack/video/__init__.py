"""Video I/O: image input, resolution buckets, resizing, section blending, mp4 and previews.

Names are exported lazily: importing one module of the package (say the x264 settings)
loads neither PyAV nor PIL unless that module needs them.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "BLEND_MODES": "framepack.video.blending",
    "FrameAssembler": "framepack.video.blending",
    "SectionBlender": "framepack.video.blending",
    "pixels_to_uint8": "framepack.video.blending",
    "BASE_RESOLUTION": "framepack.video.buckets",
    "BUCKETS_640": "framepack.video.buckets",
    "check_resolution": "framepack.video.buckets",
    "find_bucket": "framepack.video.buckets",
    "ImageSource": "framepack.video.images",
    "load_image": "framepack.video.images",
    "Mp4Writer": "framepack.video.mp4",
    "write_mp4": "framepack.video.mp4",
    "MAX_CRF": "framepack.video.x264",
    "encoder_options": "framepack.video.x264",
    "latent_preview_image": "framepack.video.preview",
    "PreviewWriter": "framepack.video.preview_mp4",
    "RESIZE_METHODS": "framepack.video.resize",
    "resize_image": "framepack.video.resize",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
