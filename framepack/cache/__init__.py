"""Step-cache policies: reuse the block stack's residual on steps where it barely changes."""

from .base import NEGATIVE, POSITIVE, BlockStack, CachePolicy, CacheStep, NoCache, SectionStats
from .first_block import FirstBlockCache
from .magcache import FRAMEPACK_F1_25, FRAMEPACK_I2V_25, MagCache, MagCacheCalibration, calibrate, resample_ratios
from .spec import parse_cache_spec
from .teacache import TeaCache

__all__ = [
    "FRAMEPACK_F1_25",
    "FRAMEPACK_I2V_25",
    "NEGATIVE",
    "POSITIVE",
    "BlockStack",
    "CachePolicy",
    "CacheStep",
    "FirstBlockCache",
    "MagCache",
    "MagCacheCalibration",
    "NoCache",
    "SectionStats",
    "TeaCache",
    "calibrate",
    "parse_cache_spec",
    "resample_ratios",
]
