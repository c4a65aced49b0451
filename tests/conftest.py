"""Keep the suite self-contained: a clone of this repository alone must pass it.

CI runs the tests in a clone with the team's notes in a folder beside it, and a
developer's machine may hold a Hugging Face cache; neither exists on a user's machine.
An audit hook refuses every file opened beside the clone (in its parent folder, outside
the clone) or in the hub cache, so a test that depends on them fails here instead of
passing here and failing in a user's clone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


class OutsideRepositoryRead(RuntimeError):
    """A test opened a file that a clone of this repository does not have."""


def _folder(path: str | os.PathLike[str]) -> str:
    return os.path.join(os.path.realpath(path), "")


_PARENT = _folder(REPOSITORY.parent)
# Beside the clone, Python environments and temporary folders are the machine's, not notes:
# imports and temporary files stay allowed there.
# (A candidate that holds the parent, say the temporary folder of a clone made in it, allows nothing.)
_ALLOWED = tuple(
    root
    for root in {_folder(REPOSITORY), _folder(tempfile.gettempdir()), _folder(sys.prefix), _folder(sys.base_prefix)}
    | {_folder(entry) for entry in sys.path if entry}
    if not _PARENT.startswith(root)
)
# A clone at the top of a file system, of a home folder or of the temporary folder has no
# "beside" worth guarding.
_GUARD_PARENT = _PARENT not in {
    _folder(os.path.abspath(os.sep)),
    _folder(os.path.expanduser("~")),
    _folder(tempfile.gettempdir()),
}
_HUB = _folder(os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))


def _refuse_outside_reads(event: str, args: tuple) -> None:
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return  # file descriptors and other events
    path = _folder(os.fsdecode(args[0]))
    beside = _GUARD_PARENT and path.startswith(_PARENT) and not path.startswith(_ALLOWED)
    if beside or path.startswith(_HUB):
        raise OutsideRepositoryRead(f"a test opened {path[:-1]}, which a clone of the repository does not have")


sys.addaudithook(_refuse_outside_reads)
