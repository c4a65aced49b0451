"""Seconds of a transformer call's parts as timed on the device: a fixed cost plus FLOPs at a rate.

``call_probe.py`` times one real double-stream block, one single-stream block and the work
around the stack (embedders, token refiner, output head) at two token counts; a part's time
is then ``fixed + FLOPs / rate`` with the two fitted through both points. The fixed part
holds what a FLOP count leaves out and does not grow with the tokens: the kernels' launches,
PyTorch's dispatch and, on a busy CPU, the threads' wait for each other at every op. At the
probed shape the model returns the measured time itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PartTiming:
    """``seconds(flops) = fixed_s + flops / flops_per_s`` for one part of a call."""

    fixed_s: float
    flops_per_s: float  # math.inf: the part's time did not grow with its FLOPs

    def seconds(self, flops: float) -> float:
        return self.fixed_s + flops / self.flops_per_s


def fit(small: tuple[float, float], large: tuple[float, float]) -> PartTiming:
    """The line through (FLOPs, seconds) at two sizes, ``large`` having more FLOPs.

    A fixed part is kept within 0..the large time: noise that made the small size slower (or
    a line through negative time) puts everything in the rate or in the fixed part, so that
    the large size (the run's) is still predicted as measured.
    """
    (f1, t1), (f2, t2) = small, large
    if f2 == f1:  # one size (a grid too small to shrink): all of it rate, the run's size as measured
        return PartTiming(0.0, f2 / t2 if t2 > 0 else math.inf)
    if f2 < f1:
        raise ValueError(f"fit: the large size needs more FLOPs than the small one, got {f2} < {f1}")
    slope = (t2 - t1) / (f2 - f1)  # seconds per FLOP
    fixed = t2 if slope <= 0 else min(max(t2 - slope * f2, 0.0), t2)
    rate = math.inf if t2 <= fixed else f2 / (t2 - fixed)
    return PartTiming(fixed, rate)


@dataclass(frozen=True)
class CallTiming:
    """A transformer call's parts and a sampler step's own work, as timed on a device."""

    double: PartTiming  # one double-stream block
    single: PartTiming  # one single-stream block
    around: PartTiming  # everything in a call but the block stack
    sampler_step_s: float  # one UniPC step's own work on the latents (the model call excluded)
    proxy: str | None = None  # how the timed model differs from the planned one, if it does
