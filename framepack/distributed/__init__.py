"""Generation over several processes on ``torch.distributed``: Ulysses sequence parallelism,
CFG parallelism (the positive and negative branches on different ranks) and job parallelism
(whole jobs of a queue spread over ranks). ``launch.py`` joins the process group that
``torchrun`` describes; ``ulysses.py`` splits the transformer's tokens.
"""

from __future__ import annotations

from .ulysses import UlyssesParallel, UlyssesSplit, valid_group_sizes

__all__ = ["UlyssesParallel", "UlyssesSplit", "valid_group_sizes"]
