"""GenerationConfig: the sampling settings of one video plus the pipeline's own options.

The sampling part is ``SamplingSettings`` (framepack.sampling.settings), all that
``generate_latents`` needs; ``config.sampling`` gives it alone. The options added here are
the pipeline's: how the image is fitted (resolution, resize), how the video is encoded (crf)
and memory (vae_tiling). Inputs (images, end image, prompts) are arguments of
``FramePackPipeline.generate``, not settings. Defaults are the reference app's: 640
resolution bucket, crf 16.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .sampling.settings import MAX_STEPS, SamplingSettings, expect_choice, expect_int
from .video.buckets import MAX_RESOLUTION
from .video.resize import RESIZE_METHODS
from .video.x264 import MAX_CRF

MIN_RESOLUTION = 32

__all__ = ["MAX_STEPS", "MIN_RESOLUTION", "RESIZE_METHODS", "GenerationConfig"]


@dataclass(frozen=True)
class GenerationConfig(SamplingSettings):
    """Settings of one generation: every ``SamplingSettings`` field, then the pipeline's options.

    resolution, resize     bucket resolution (multiple of 16) and how the image is fitted to it
    crf                    x264 quality, 0 (best: High-profile quantizer 1, still widely playable) to 51
    vae_tiling             True/False to force VAE tiling, None to let the pipeline decide
    keyframe_embeds        with ``keyframes``: a section's keyframe also gives its SigLIP image
                           embeddings in place of the start image's (False: only its latent, in the
                           start-frame slot; the embeddings stay the start image's everywhere)
    """

    resolution: int = 640
    resize: str = "crop"
    crf: int = 16
    vae_tiling: bool | None = None
    keyframe_embeds: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        expect_int("resolution", self.resolution, minimum=MIN_RESOLUTION, maximum=MAX_RESOLUTION)
        if self.resolution % 16:
            raise ConfigError(f"resolution: expected a multiple of 16, got {self.resolution}")
        expect_choice("resize", self.resize, RESIZE_METHODS)
        expect_int("crf", self.crf, minimum=0)
        if self.crf > MAX_CRF:
            raise ConfigError(f"crf: expected an int in [0, {MAX_CRF}] (x264's range), got {self.crf}")
        if self.vae_tiling is not None and not isinstance(self.vae_tiling, bool):
            raise ConfigError(f"vae_tiling: expected True, False or None, got {self.vae_tiling!r}")
        if not isinstance(self.keyframe_embeds, bool):
            raise ConfigError(f"keyframe_embeds: expected True or False, got {self.keyframe_embeds!r}")
