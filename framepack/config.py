"""GenerationConfig: every setting of one video, validated on construction.

Defaults are those of the reference app (demo_gradio.py): 5 s at 30 fps in windows of 9
latent frames, 25 UniPC (bh1) steps, seed 31337, distilled guidance 10, no real CFG,
auto shift, 640 resolution bucket, crf 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .cache.base import CachePolicy
from .errors import ConfigError
from .sampling.sections import END_EMBED_MODES, MODES, check_length
from .sampling.unipc import VARIANTS
from .video.buckets import MAX_RESOLUTION
from .video.mp4 import MAX_CRF
from .video.resize import RESIZE_METHODS

MIN_RESOLUTION = 32
# Ten times the most the reference app (demo_gradio.py) offers: more is a typo that would run for days.
MAX_STEPS = 1000


@dataclass(frozen=True)
class GenerationConfig:
    """Settings of one generation.

    seconds, fps, window   video length, frame rate and latent frames per section
    steps, variant, shift  UniPC steps and variant; shift None = the reference's length rule
    seed                   seeds the one CPU generator that draws every section's noise
    mode                   "inverted" (anti-drifting, FramePackI2V_HY) or "forward" (F1)
    real_cfg, cfg_rescale  real classifier-free guidance (1 = off) and its std rescale in [0, 1]
    distilled_cfg          distilled guidance scale embedded by the transformer
    resolution, resize     bucket resolution (multiple of 16) and how the image is fitted to it
    cache                  a CachePolicy (e.g. TeaCache) or None for none
    end_image              optional last frame (inverted mode only)
    end_embed_mode         how start/end image embeddings mix per section when an end image is given:
                           "weighted_average" (start·s + end·(1−s) everywhere), "linear" (from start
                           embeds on the video's end to end embeds on its start) or "disabled" (start·s)
    start_embed_strength   s above
    negative_prompt        used only when real_cfg != 1
    crf                    x264 quality, 0 (best: High-profile quantizer 1, still widely playable) to 51
    vae_tiling             True/False to force VAE tiling, None to let the pipeline decide
    """

    seconds: float = 5.0
    fps: int = 30
    window: int = 9
    steps: int = 25
    seed: int = 31337
    mode: str = "inverted"
    real_cfg: float = 1.0
    distilled_cfg: float = 10.0
    cfg_rescale: float = 0.0
    shift: float | None = None
    variant: str = "bh1"
    resolution: int = 640
    resize: str = "crop"
    cache: CachePolicy | None = None
    end_image: Any = None
    end_embed_mode: str = "weighted_average"
    start_embed_strength: float = 0.5
    negative_prompt: str = ""
    crf: int = 16
    vae_tiling: bool | None = None

    def __post_init__(self) -> None:
        _number("seconds", self.seconds, minimum=0.0, inclusive=False)
        _integer("fps", self.fps, minimum=1)
        _integer("window", self.window, minimum=1)
        check_length(self.seconds, self.fps, self.window)
        _integer("steps", self.steps, minimum=1, maximum=MAX_STEPS)
        _integer("seed", self.seed, minimum=-(2**63))
        if self.seed >= 2**64:
            raise ConfigError(f"seed: expected an int below 2**64, got {self.seed}")
        _choice("mode", self.mode, MODES)
        _number("real_cfg", self.real_cfg, minimum=0.0, inclusive=False)
        _number("distilled_cfg", self.distilled_cfg, minimum=0.0)
        _number("cfg_rescale", self.cfg_rescale, minimum=0.0, maximum=1.0)
        if self.shift is not None:
            _number("shift", self.shift, minimum=0.0, inclusive=False)
        _choice("variant", self.variant, VARIANTS)
        _integer("resolution", self.resolution, minimum=MIN_RESOLUTION, maximum=MAX_RESOLUTION)
        if self.resolution % 16:
            raise ConfigError(f"resolution: expected a multiple of 16, got {self.resolution}")
        _choice("resize", self.resize, RESIZE_METHODS)
        if self.cache is not None and not isinstance(self.cache, CachePolicy):
            raise ConfigError(f"cache: expected a CachePolicy instance or None, got {type(self.cache).__name__}")
        if self.end_image is not None and self.mode != "inverted":
            raise ConfigError(f"end_image: only the 'inverted' mode can end on a given frame, got mode {self.mode!r}")
        _choice("end_embed_mode", self.end_embed_mode, END_EMBED_MODES)
        _number("start_embed_strength", self.start_embed_strength, minimum=0.0, maximum=1.0)
        if not isinstance(self.negative_prompt, str):
            raise ConfigError(f"negative_prompt: expected a str, got {type(self.negative_prompt).__name__}")
        _integer("crf", self.crf, minimum=0)
        if self.crf > MAX_CRF:
            raise ConfigError(f"crf: expected an int in [0, {MAX_CRF}] (x264's range), got {self.crf}")
        if self.vae_tiling is not None and not isinstance(self.vae_tiling, bool):
            raise ConfigError(f"vae_tiling: expected True, False or None, got {self.vae_tiling!r}")


def _integer(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: expected an int in [{minimum}, {maximum}], got {value}")


def _number(name: str, value: Any, *, minimum: float, maximum: float | None = None, inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    low_ok = value >= minimum if inclusive else value > minimum
    if not low_ok or (maximum is not None and value > maximum):
        low = f"{'>=' if inclusive else '>'} {minimum:g}"
        expected = f"a number {low}" if maximum is None else f"a number in [{minimum:g}, {maximum:g}]"
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
