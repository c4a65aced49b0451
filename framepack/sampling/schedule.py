"""Sigma schedules: the flux time shift with FramePack's sequence-length rule."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

# mu grows linearly with the token count from (256, 0.5) to (4096, 1.15), capped at ln 7.
_MU_SLOPE = (1.15 - 0.5) / (4096 - 256)
_MU_INTERCEPT = 0.5 - 256 * _MU_SLOPE
_MU_MAX = math.log(7.0)


def sequence_length(frames: int, height: int, width: int) -> int:
    """Token count the reference's shift rule uses for a window of ``frames`` pixel frames of height x width px."""
    for name, value in (("frames", frames), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"sequence_length: {name} must be a positive int, got {value!r}")
    latent_frames = (frames + 3) // 4
    return latent_frames * (height // 8) * (width // 8) // 4


def time_shift_mu(seq_len: int) -> float:
    """The reference's mu for a sequence of ``seq_len`` tokens: linear in seq_len, capped at ln 7."""
    return min(_MU_SLOPE * seq_len + _MU_INTERCEPT, _MU_MAX)


def flux_sigmas(steps: int, seq_len: int, shift: float | None = None) -> torch.Tensor:
    """``steps + 1`` float32 sigmas from 1 down to exactly 0.

    ``shift`` overrides the sequence-length rule (mu = ln shift); None uses the rule.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"flux_sigmas: steps must be an int >= 1, got {steps!r}")
    if shift is not None and not (math.isfinite(shift) and shift > 0):
        raise ConfigError(f"flux_sigmas: shift must be a finite number > 0 or None, got {shift!r}")
    mu = time_shift_mu(seq_len) if shift is None else math.log(shift)
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float32)
    # Same expression and operation order as the reference, so the float32 values match bit for bit
    # (t = 0 gives 1/0 = inf and so sigma = 0 exactly).
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))
