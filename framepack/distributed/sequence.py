"""Turning sequence parallelism on and off for one transformer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist

from ..errors import ConfigError
from ..models.transformer import FramePackTransformer
from .ulysses import UlyssesParallel


@contextmanager
def sequence_parallel(
    transformer: FramePackTransformer, group: dist.ProcessGroup | None = None
) -> Iterator[UlyssesParallel]:
    """Within the block, ``transformer`` splits every call's tokens over ``group`` (Ulysses).

    Every rank of the group must make the same calls with the same inputs; each gets the
    whole result. Raises ``ConfigError`` when the heads do not divide over the ranks or the
    model's blocks are compiled.
    """
    parallel = UlyssesParallel(group)
    parallel.check_heads(transformer.config.num_attention_heads)
    if transformer.compiled_blocks is not None:
        raise ConfigError("sequence parallelism runs eager blocks: do not compile the transformer (--compile)")
    previous = transformer.sequence_parallel
    transformer.sequence_parallel = parallel
    try:
        yield parallel
    finally:
        transformer.sequence_parallel = previous
