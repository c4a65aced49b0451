"""CFG parallelism: the positive and the negative guidance branch on two ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..cache.base import NEGATIVE, POSITIVE
from ..errors import ConfigError


class CfgParallel:
    """Rank 0 of ``group`` computes the positive branch, rank 1 the negative one
    (``framepack.sampling.guidance.BranchSplit``)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        size = dist.get_world_size(group)
        if size != 2:
            raise ConfigError(f"cfg parallel: a branch group has 2 ranks (positive, negative), got {size}")
        self.group = group
        self.branch = POSITIVE if dist.get_rank(group) == 0 else NEGATIVE

    def exchange(self, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [torch.empty_like(velocity) for _ in range(2)]
        dist.all_gather(parts, velocity.contiguous(), group=self.group)
        return parts[0], parts[1]
