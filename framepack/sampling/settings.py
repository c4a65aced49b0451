"""SamplingSettings: everything the section loop needs to sample a video, validated on construction.

Defaults are those of the reference app (demo_gradio.py): 5 s at 30 fps in windows of 9
latent frames, 25 UniPC (bh1) steps, seed 31337, distilled guidance 10, no real CFG, auto shift.
Nothing here knows images, video files or encoders: ``generate_latents`` needs only this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..cache.base import CachePolicy
from ..cache.spec import CacheSpec, build_policy, check_cache_spec
from ..errors import ConfigError
from .sections import END_EMBED_MODES, MODES, check_length
from .unipc import VARIANTS

# Ten times the most the reference app (demo_gradio.py) offers: more is a typo that would run for days.
MAX_STEPS = 1000
# Latent strengths scale a context latent; the tools go from 0 (ignore it) to a little above 1
# (eichi's F1 image strength); twice the latent is far outside what the model saw in training.
MAX_LATENT_STRENGTH = 2.0


@dataclass(frozen=True)
class SamplingSettings:
    """Settings of one run of the section loop.

    seconds, fps, window   video length, frame rate and latent frames per section
    steps, variant, shift  UniPC steps and variant; shift None = the reference's length rule
    seed                   seeds the one CPU generator that draws every section's noise
    mode                   "inverted" (anti-drifting, FramePackI2V_HY) or "forward" (F1)
    real_cfg, cfg_rescale  real classifier-free guidance (1 = off) and its std rescale in [0, 1]
    distilled_cfg          distilled guidance scale embedded by the transformer
    cache                  the step cache, given once: None (none), a spec such as "teacache:0.15"
                           (``parse_cache_spec``), a ``CachePolicy`` subclass or factory (called
                           with no argument), or a policy instance used as a template. Every run
                           builds a fresh policy from it (``new_cache_policy``): a template
                           instance is never run itself (each run samples with its ``for_run()``
                           copy) and collects no statistics; they are on each section's result.
    end_embed_mode         how start/end image embeddings mix per section when an end image is given:
                           "weighted_average" (start·s + end·(1−s) everywhere), "linear" (from start
                           embeds on the video's end to end embeds on its start) or "disabled" (start·s)
    start_embed_strength   s above
    end_strength           the end image's latent × this in its context slot (1 = as given; lower
                           loosens the pull toward the end frame, as FramePack-Studio/eichi's strength)
    start_strength         the start-frame context slot's latent × this (the start image or a
                           keyframe) in every section; the video's own first frame stays the image
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
    cache: CacheSpec = None
    end_embed_mode: str = "weighted_average"
    start_embed_strength: float = 0.5
    end_strength: float = 1.0
    start_strength: float = 1.0

    def __post_init__(self) -> None:
        expect_number("seconds", self.seconds, minimum=0.0, inclusive=False)
        expect_int("fps", self.fps, minimum=1)
        expect_int("window", self.window, minimum=1)
        check_length(self.seconds, self.fps, self.window)
        expect_int("steps", self.steps, minimum=1, maximum=MAX_STEPS)
        expect_int("seed", self.seed, minimum=-(2**63))
        if self.seed >= 2**64:
            raise ConfigError(f"seed: expected an int below 2**64, got {self.seed}")
        expect_choice("mode", self.mode, MODES)
        expect_number("real_cfg", self.real_cfg, minimum=0.0, inclusive=False)
        expect_number("distilled_cfg", self.distilled_cfg, minimum=0.0)
        expect_number("cfg_rescale", self.cfg_rescale, minimum=0.0, maximum=1.0)
        if self.shift is not None:
            expect_number("shift", self.shift, minimum=0.0, inclusive=False)
        expect_choice("variant", self.variant, VARIANTS)
        check_cache_spec(self.cache)
        expect_choice("end_embed_mode", self.end_embed_mode, END_EMBED_MODES)
        expect_number("start_embed_strength", self.start_embed_strength, minimum=0.0, maximum=1.0)
        expect_number("end_strength", self.end_strength, minimum=0.0, maximum=MAX_LATENT_STRENGTH)
        expect_number("start_strength", self.start_strength, minimum=0.0, maximum=MAX_LATENT_STRENGTH)

    @property
    def sampling(self) -> SamplingSettings:
        """Only the sampling settings (a ``GenerationConfig`` also carries the pipeline's options)."""
        if type(self) is SamplingSettings:
            return self
        return SamplingSettings(**{f.name: getattr(self, f.name) for f in fields(SamplingSettings)})

    def new_cache_policy(self) -> CachePolicy | None:
        """A fresh policy for one run, built from ``cache`` (None: no cache)."""
        return build_policy(self.cache)


def expect_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: expected an int in [{minimum}, {maximum}], got {value}")


def expect_number(
    name: str, value: Any, *, minimum: float, maximum: float | None = None, inclusive: bool = True
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    low_ok = value >= minimum if inclusive else value > minimum
    if not low_ok or (maximum is not None and value > maximum):
        low = f"{'>=' if inclusive else '>'} {minimum:g}"
        expected = f"a number {low}" if maximum is None else f"a number in [{minimum:g}, {maximum:g}]"
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


def expect_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
