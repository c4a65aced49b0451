"""``framepack`` as torchrun starts it, except that rank 1's transformer raises in its first call:
a rank failing mid-run through the real command-line path (tests/test_distributed_cli.py)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from framepack import cli
from framepack.models.transformer import FramePackTransformer

BAR_DRAWN_S = 3.0


def _broken(*_: Any, **__: Any) -> None:
    # Rank 0 draws its progress bar just before its first call: fail after it has, so that this
    # rank's error line comes while the bar holds the terminal's line (as a real failure may).
    time.sleep(BAR_DRAWN_S)
    raise RuntimeError("rank 1 broke on purpose")


if __name__ == "__main__":
    if os.environ["RANK"] == "1":
        FramePackTransformer.denoise = _broken  # type: ignore[method-assign]
    sys.exit(cli.main())
