"""MagCache: skip steps whose residual magnitude is predicted, from a calibrated table, to barely change.

The decision reads only a per-step table of magnitude ratios, so the skip schedule is known
before sampling (``planned_skips``). ``MagCacheCalibration`` records such a table from an
uncached run, and ``calibrate`` wraps that for one generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .base import POSITIVE, CachePolicy, CacheStep

# Official MagCache FramePack demo tables (Zehong-Ma/MagCache, MagCache4FramePack), 25 steps;
# entry 0 is a placeholder, entry t is mean ||r_t|| / ||r_{t-1}||.
FRAMEPACK_I2V_25 = (
    1.0, 1.26562, 1.23438, 1.03125, 1.02344, 1.03906, 1.01562, 1.03906, 1.05469, 1.02344, 1.03906, 0.99609, 1.03125,
    1.02344, 1.01562, 1.02344, 1.00781, 1.04688, 0.98828, 1.0, 1.00781, 0.98828, 0.94141, 0.94141, 0.78906,
)  # fmt: skip
FRAMEPACK_F1_25 = (
    1.0, 1.25781, 1.08594, 1.02344, 1.00781, 1.02344, 1.00781, 1.02344, 1.05469, 0.99609, 1.03906, 1.00781, 1.01562,
    1.00781, 1.02344, 1.01562, 0.98047, 1.05469, 0.98047, 0.96875, 1.03125, 0.97266, 0.9375, 0.96484, 0.78516,
)  # fmt: skip


def resample_ratios(ratios: Sequence[float], num_steps: int) -> list[float]:
    """Nearest-index resampling to ``num_steps`` entries: ``new[j] = old[round(j * ((L-1)/(N-1)))]``.

    The index is the reference's: the float product of j and the float step (L-1)/(N-1),
    rounded half-to-even. For some N the product lands just under .5 where the exact fraction
    is .5 (L = 25: N = 177, 353, 657, 705, 753 below 1000) and the lower entry is taken.
    Endpoints are kept, and one step takes the last entry. Ratios are not rescaled for the
    new step spacing.
    """
    if num_steps < 1:
        raise ConfigError(f"resample_ratios: num_steps must be >= 1, got {num_steps}")
    if num_steps == 1:
        return [float(ratios[-1])]
    scale = (len(ratios) - 1) / (num_steps - 1)
    # Python's round of a float is half-to-even on its exact value, as np.round.
    return [float(ratios[round(j * scale)]) for j in range(num_steps)]


class MagCache(CachePolicy):
    """The MagCache FramePack-demo rule with threshold δ, at most ``max_skips`` (K) skips in a row.

    Per call c of an N-step section (table γ resampled to N entries): the first ``int(retention·N)``
    calls and call 0 compute. From then on each call multiplies the accumulated ratio ρ by γ[c],
    adds ``|1 - ρ|`` to the error E and counts n; it is skipped iff E <= δ, n <= K and
    ``|1 - γ[c]| <= max_ratio_deviation``. A computed call resets ρ = 1, E = 0, n = 0.

    The last gate (0.06 in the FramePack demo and FP-Studio, absent in other MagCache ports)
    forbids skipping any step whose own ratio is off by more than 6%; with the FramePack tables
    it forces steps 1-2 and the last step, which yields the section's output. Defaults are the
    demo's (δ 0.1, K 3, r 0.2); ``ratios`` defaults to the official I2V table, use
    ``FRAMEPACK_F1_25`` for the F1 model, or a table from ``calibrate``.
    Each guidance branch keeps its own ρ, E, n and residual (the reference shares them).
    """

    def __init__(
        self,
        threshold: float = 0.1,
        max_skips: int = 3,
        retention: float = 0.2,
        ratios: Sequence[float] | None = None,
        max_ratio_deviation: float = 0.06,
    ) -> None:
        super().__init__()
        table = tuple(FRAMEPACK_I2V_25 if ratios is None else ratios)
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ConfigError(f"MagCache: threshold must be a finite number >= 0, got {threshold!r}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
            raise ConfigError(f"MagCache: max_skips must be an int >= 0, got {max_skips!r}")
        if not (0 <= retention <= 1):
            raise ConfigError(f"MagCache: retention must be in [0, 1], got {retention!r}")
        if not (math.isfinite(max_ratio_deviation) and max_ratio_deviation >= 0):
            raise ConfigError(
                f"MagCache: max_ratio_deviation must be a finite number >= 0, got {max_ratio_deviation!r}"
            )
        if not table or not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in table):
            raise ConfigError(f"MagCache: ratios must be a non-empty sequence of finite numbers > 0, got {ratios!r}")
        self.threshold = float(threshold)
        self.max_skips = max_skips
        self.retention = float(retention)
        self.ratios = table
        self.max_ratio_deviation = float(max_ratio_deviation)
        self._table: list[float] = []

    def __repr__(self) -> str:
        return (
            f"MagCache(threshold={self.threshold}, max_skips={self.max_skips}, retention={self.retention}, "
            f"max_ratio_deviation={self.max_ratio_deviation}, {len(self.ratios)} ratios)"
        )

    def start_section(self, num_steps: int) -> None:
        super().start_section(num_steps)
        self._table = resample_ratios(self.ratios, num_steps)

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        return not self._skips(step.step, step.num_steps, self._table, state)

    def planned_skips(self, num_steps: int) -> list[int]:
        """The calls this policy skips in a ``num_steps`` section (the rule reads no tensor)."""
        table, state = resample_ratios(self.ratios, num_steps), {}
        return [c for c in range(num_steps) if self._skips(c, num_steps, table, state)]

    def _skips(self, call: int, num_steps: int, table: list[float], state: dict[str, Any]) -> bool:
        if call == 0 or call < int(self.retention * num_steps):
            state.update(ratio=1.0, error=0.0, run=0)
            return False
        ratio = table[call]
        state["ratio"] *= ratio
        state["error"] += abs(1.0 - state["ratio"])
        state["run"] += 1
        skip = (
            state["error"] <= self.threshold
            and state["run"] <= self.max_skips
            and abs(1.0 - ratio) <= self.max_ratio_deviation
        )
        if not skip:
            state.update(ratio=1.0, error=0.0, run=0)
        return skip


class MagCacheCalibration(CachePolicy):
    """Computes every call and records each branch's MagCache ratio table per section.

    For call c >= 1 the ratio is the mean over tokens (and batch) of ``||r_c|| / ||r_{c-1}||``
    (L2 over channels, in float32) with r the block-stack residual; ``tables[s][branch]`` is
    ``[1.0] + ratios`` for section s. Ratios are not rounded (the published ones are, to 5
    decimals, from bf16 residuals). Calibrate positive and negative branches separately.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, list[float]]] = []

    def for_run(self) -> MagCacheCalibration:
        run = super().for_run()
        run.tables = []  # this run's own
        return run

    def start_section(self, num_steps: int) -> None:
        super().start_section(num_steps)
        self.tables.append({})

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        return True

    def on_computed(self, step: CacheStep, residual: torch.Tensor, state: dict[str, Any]) -> None:
        current = residual.float()
        table = self.tables[-1].setdefault(step.branch, [1.0])
        if "previous" in state:
            ratio = current.norm(dim=-1) / state["previous"].norm(dim=-1)
            table.append(ratio.mean().item())
        state["previous"] = current

    def table(self, branch: str = POSITIVE, section: int = -1) -> list[float]:
        """The recorded ``[1.0] + ratios`` of one branch in one section (default: the last)."""
        if not self.tables or branch not in self.tables[section]:
            raise ConfigError(f"MagCacheCalibration: no calls recorded for branch {branch!r} in section {section}")
        return list(self.tables[section][branch])


def calibrate(
    generate: Callable[[Callable[[], CachePolicy]], Any], branch: str = POSITIVE, section: int = -1
) -> list[float]:
    """Run ``generate(cache)`` with a factory of ``MagCacheCalibration`` policies; return the table
    the last policy it built recorded (the run's: a policy built before it, e.g. to describe the
    run, records nothing).

    ``generate`` is any callable that samples with the cache it is given, e.g.
    ``lambda cache: pipe.generate(..., config=GenerationConfig(steps=30, cache=cache))``.
    Pass the result as ``MagCache(ratios=...)`` for the same model, resolution and step count.
    """
    built: list[MagCacheCalibration] = []

    def factory() -> MagCacheCalibration:
        built.append(MagCacheCalibration())
        return built[-1]

    generate(factory)
    if not built:
        raise ConfigError("calibrate: generate(cache) ran without building a policy from the cache it was given")
    return built[-1].table(branch, section)
