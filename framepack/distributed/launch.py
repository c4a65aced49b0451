"""Joining the process group and laying the ranks out for one kind of parallelism.

``torchrun --nproc-per-node N`` starts N processes and describes the group in their
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); ``join`` reads it. Collectives
time out (``timeout_s``, in the joined group and in every group ``plan`` makes), so a rank
that dies or hangs makes the others fail instead of waiting forever; torchrun also ends the
other ranks as soon as one exits with an error. Of all the ranks' errors, one is printed
(``reports_failure``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..models.transformer import FramePackTransformer
from .cfg import CfgParallel
from .sequence import sequence_parallel

MODES = ("ulysses", "cfg", "jobs")
DEFAULT_TIMEOUT_S = 600.0


@dataclasses.dataclass
class Parallel:
    """This process's place in a parallel run.

    ``ulysses``: every rank shares every transformer call's tokens. ``cfg``: 2·N ranks, the
    first N compute the positive branch, the last N the negative one, each half splitting
    its tokens N ways. ``jobs``: each rank generates whole videos of a queue.
    """

    mode: str
    rank: int
    world_size: int
    sequence_group: dist.ProcessGroup | None = None  # None: no sequence parallelism
    sequence_size: int = 1
    branches: CfgParallel | None = None

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes outputs, progress and run folders."""
        return self.rank == 0

    @contextmanager
    def applied(self, transformer: FramePackTransformer) -> Iterator[None]:
        """``transformer`` splits its tokens over this rank's sequence group within the block."""
        with ExitStack() as stack:
            if self.sequence_size > 1:
                stack.enter_context(sequence_parallel(transformer, self.sequence_group))
            yield


def join(
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    init_method: str | None = None,
    rank: int = -1,
    world_size: int = -1,
) -> None:
    """Join the process group torchrun describes (or ``init_method`` with ``rank`` and
    ``world_size``); nccl on GPUs, else gloo. Each collective fails after ``timeout_s``."""
    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def check_guidance(mode: str, real_cfg: float) -> None:
    """Refuse CFG parallelism without real CFG: with one branch, half the ranks would repeat the other half's work."""
    if mode == "cfg" and real_cfg == 1.0:
        raise ConfigError(
            "parallel 'cfg' puts the two real-CFG branches on different ranks, but real_cfg is 1 "
            "(one branch); set real_cfg > 1 (--real-cfg) or use --parallel ulysses"
        )


def plan(mode: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Parallel:
    """Lay the ranks of the joined group out for ``mode``; every rank must call it (groups are collective).

    Each collective of the groups made here fails after ``timeout_s`` (torch gives new groups its
    own default, 30 minutes, not the joined group's timeout).
    """
    if mode not in MODES:
        raise ConfigError(f"parallel: mode must be one of {list(MODES)}, got {mode!r}")
    if not dist.is_initialized():
        raise ConfigError(f"parallel {mode!r}: no process group; start with torchrun --nproc-per-node N")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "jobs":
        return Parallel(mode, rank, world)
    if mode == "ulysses":
        return Parallel(mode, rank, world, sequence_group=None, sequence_size=world)
    if world % 2:
        raise ConfigError(f"parallel 'cfg': needs 2·N ranks (positive and negative halves), got {world}")
    half = world // 2
    timeout = datetime.timedelta(seconds=timeout_s)
    sequence_groups = [dist.new_group(list(range(b * half, (b + 1) * half)), timeout=timeout) for b in range(2)]
    branch_groups = [dist.new_group([j, half + j], timeout=timeout) for j in range(half)]
    return Parallel(
        mode,
        rank,
        world,
        sequence_group=sequence_groups[rank // half],
        sequence_size=half,
        branches=CfgParallel(branch_groups[rank % half]),
    )


def reports_failure(same_on_every_rank: bool) -> bool:
    """Whether this rank prints its error: a failed parallel run prints one error, not one per rank.

    In a process group the first rank to fail claims the report in the group's store (torchrun
    keeps it in its own process, so it outlives any rank): the rank that raised claims it before
    it exits, and the others, whose collectives then fail for want of it, find it taken. Before
    the group is joined, an error ``same_on_every_rank`` (the arguments, which every rank checks
    alike) is printed by torchrun's rank 0 only; any other (joining the group, a file or device
    one node lacks) may be one rank's alone, so every rank prints its own.
    """
    if not dist.is_initialized():
        return not same_on_every_rank or os.environ.get("RANK", "0") == "0"
    rank = str(dist.get_rank()).encode()
    try:
        return dist.distributed_c10d._get_default_store().compare_set(_first_failure_key(), "", rank) == rank
    except Exception:  # the store is gone with the rank that held it: a second line rather than none
        return True


def _first_failure_key() -> str:
    """The store key of a run's one error: per torchrun attempt, whose store a restart keeps."""
    return f"framepack/first_failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
