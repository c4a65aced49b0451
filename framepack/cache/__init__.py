"""Step-cache policies: reuse the block stack's residual on steps where it barely changes."""

from .base import NEGATIVE, POSITIVE, BlockStack, CachePolicy, CacheStep, NoCache, SectionStats

__all__ = ["BlockStack", "CachePolicy", "CacheStep", "NoCache", "SectionStats", "POSITIVE", "NEGATIVE"]
