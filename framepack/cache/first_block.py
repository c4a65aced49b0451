"""FirstBlockCache: run block 0 every call, reuse the other blocks while its residual holds still.

ParaAttention's rule (also diffusers' ``FirstBlockCacheConfig``): block 0's residual is
compared with block 0's residual at the last *computed* call, so drift since then counts.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from .base import CachePolicy, CacheStep


class FirstBlockCache(CachePolicy):
    """Reuse the residual of blocks 1.. while block 0's residual changed by less than ``threshold``.

    Per call: run block 0, r = its output minus its input (image stream);
    ``rel = mean|r_ref - r| / mean|r_ref|`` in r's dtype, with r_ref block 0's residual at the
    last computed call. Reuse iff ``rel < threshold`` (strict, as ParaAttention; diffusers reuses
    on ``<=``), so threshold 0 never reuses. r_ref changes only when the rest is computed.
    Default 0.06 is ParaAttention's value for HunyuanVideo. Unlike TeaCache nothing is forced:
    neither the last call of a section nor any warm-up; every section starts with no reference.
    A reused call still costs block 0 (about 1/60 of the stack on the 13B model).
    """

    decides_after_first_block = True

    def __init__(self, threshold: float = 0.06) -> None:
        super().__init__()
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ConfigError(f"FirstBlockCache: threshold must be a finite number >= 0, got {threshold!r}")
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        return f"FirstBlockCache(threshold={self.threshold})"

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        reference = state.get("reference")
        if reference is None or reference.shape != step.first_block_residual.shape:
            return True
        return not relative_l1(reference, step.first_block_residual) < self.threshold

    def on_computed(self, step: CacheStep, residual: torch.Tensor, state: dict[str, Any]) -> None:
        state["reference"] = step.first_block_residual


def relative_l1(reference: torch.Tensor, current: torch.Tensor) -> float:
    """mean|reference - current| / mean|reference|, evaluated in the tensors' dtype."""
    return ((reference - current).abs().mean() / reference.abs().mean()).item()
