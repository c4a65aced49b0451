"""Keep the suite self-contained: a clone of this repository alone must pass it.

CI runs the tests in a clone with the team's ``../shared`` folder beside it, and a
developer's machine may hold a Hugging Face cache; neither exists on a user's machine.
An audit hook refuses every file opened under those folders, so a test that depends on
them fails here instead of passing here and failing in a user's clone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


class OutsideRepositoryRead(RuntimeError):
    """A test opened a file that a clone of this repository does not have."""


def _forbidden_roots() -> tuple[str, ...]:
    hub = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return tuple(os.path.join(os.path.realpath(p), "") for p in (REPOSITORY.parent / "shared", hub))


_FORBIDDEN = _forbidden_roots()


def _refuse_outside_reads(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return  # file descriptors and other events
    path = os.path.realpath(os.fsdecode(args[0]))
    if any(path.startswith(root) or path == root[:-1] for root in _FORBIDDEN):
        raise OutsideRepositoryRead(f"a test opened {path}, which a clone of the repository does not have")


sys.addaudithook(_refuse_outside_reads)
