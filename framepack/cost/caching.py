"""The share of a section's steps that run the block stack under a cache policy.

MagCache decides from a fixed table, so its share is exact (``MagCache.planned_skips``).
TeaCache decides from the model's activations: its share is an expectation, taken from the
speed-ups its upstream states for FramePack (``cache/teacache.py``: threshold 0.1 about
1.6x faster, 0.15 about 2.1x), i.e. 1/1.6 and 1/2.1 of the steps computed, interpolated
linearly in the threshold and never below the two calls it always computes.
FirstBlockCache is counted as computing every step: it skipped none of 25 in the repository's
cache benchmark (README), and always runs the first block.
"""

from __future__ import annotations

import itertools

from ..cache.base import CachePolicy, NoCache
from ..cache.first_block import FirstBlockCache
from ..cache.magcache import MagCache
from ..cache.spec import CacheSpec, build_policy
from ..cache.teacache import TeaCache

# (threshold, share of steps computed): TeaCache's upstream figures, and 0 computing every step
TEACACHE_SHARES = ((0.0, 1.0), (0.1, 1 / 1.6), (0.15, 1 / 2.1))


def computed_share(spec: CacheSpec, steps: int) -> tuple[float, str]:
    """(share of the ``steps`` calls of a section that run the block stack, how it is known)."""
    policy: CachePolicy = build_policy(spec) or NoCache()
    if isinstance(policy, NoCache):
        return 1.0, "every step"
    if isinstance(policy, MagCache):
        skipped = len(policy.planned_skips(steps))
        return (steps - skipped) / steps, f"exact: MagCache's schedule computes {steps - skipped} of {steps}"
    if isinstance(policy, TeaCache):
        share = _teacache_share(policy.rel_l1_thresh)
        share = max(share, min(2, steps) / steps)
        return (
            share,
            f"expected: TeaCache({policy.rel_l1_thresh:g}) computes ~{share * steps:.1f} of {steps} (upstream speed-ups)",
        )
    if isinstance(policy, FirstBlockCache):
        return 1.0, "assumed: FirstBlockCache skips none (the repository's cache benchmark)"
    return 1.0, f"assumed: {type(policy).__name__} skips none (unknown policy)"


def _teacache_share(threshold: float) -> float:
    for (t0, s0), (t1, s1) in itertools.pairwise(TEACACHE_SHARES):
        if threshold <= t1:
            return s0 + (s1 - s0) * (threshold - t0) / (t1 - t0)
    (t0, s0), (t1, s1) = TEACACHE_SHARES[-2:]
    return max(s1 + (s1 - s0) / (t1 - t0) * (threshold - t1), 0.0)
