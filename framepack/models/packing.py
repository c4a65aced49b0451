"""How many image tokens one transformer call sees: the noisy window plus the packed context.

The noisy latents are patchified by ``patch_size_t x patch_size x patch_size`` (1 x 2 x 2);
each context group by its own kernel (``CleanLatentEmbedder.KERNELS``: 1x, 2x, 4x), after
replicate-padding to a multiple of it. The transformer, the CLI's ``plan`` and the memory
planner all count tokens with these functions.
"""

from __future__ import annotations

from collections.abc import Mapping

from .transformer_blocks import CleanLatentEmbedder

# Latent frames each section reads from the history, per context group (the reference's
# split [1, 16, 2, 1, window]: 16 frames at 4x, 2 at 2x, 1 at 1x); sampling/sections.py
# builds its layouts from these.
HISTORY_CONTEXT_FRAMES: Mapping[str, int] = {"clean_1x": 1, "clean_2x": 2, "clean_4x": 16}
# The token groups: the 1x group also carries the start latent.
CONTEXT_FRAMES: Mapping[str, int] = {
    "clean": 1 + HISTORY_CONTEXT_FRAMES["clean_1x"],
    "clean_2x": HISTORY_CONTEXT_FRAMES["clean_2x"],
    "clean_4x": HISTORY_CONTEXT_FRAMES["clean_4x"],
}


def _ceil(n: int, k: int) -> int:
    return -(-n // k)


def noisy_tokens(frames: int, height: int, width: int, *, patch_size: int = 2, patch_size_t: int = 1) -> int:
    """Tokens of ``frames`` noisy latent frames of ``height x width`` latent pixels."""
    return (frames // patch_size_t) * (height // patch_size) * (width // patch_size)


def context_tokens(height: int, width: int, frames: Mapping[str, int] = CONTEXT_FRAMES) -> int:
    """Tokens of the packed context: each group's frames, padded up to its kernel and patchified by it."""
    total = 0
    for group, count in frames.items():
        kt, kh, kw = CleanLatentEmbedder.KERNELS[group]
        total += _ceil(count, kt) * _ceil(height, kh) * _ceil(width, kw)
    return total


def packed_tokens(height: int, width: int, window: int) -> tuple[int, int]:
    """(noisy, packed context) image tokens of one section at a ``height x width`` latent size."""
    return noisy_tokens(window, height, width), context_tokens(height, width)
