"""Output files appear whole or not at all: write beside the target, then rename into place.

A full disk, a killed process or a writer's error mid-file must never leave a truncated
file at the target, nor destroy the file already there before the new one is complete.
Every output (videos, previews, frame chunks, run state) is therefore written to a hidden
temporary file in the target's folder (same file system, so the rename is atomic), flushed
to disk, and ``os.replace``-d over the target. On failure the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def partial_path(target: Path) -> Path:
    """A fresh hidden name beside ``target`` that keeps its suffix (PyAV picks the container by it)."""
    return target.with_name(f".{target.stem}.{secrets.token_hex(4)}.partial{target.suffix}")


@contextmanager
def replacing(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends cleanly, it becomes ``target``.

    Any error removes the temporary file and leaves ``target`` as it was; an ``OSError``
    (say "No space left on device") is raised as an ``OutputError`` naming ``target``.
    """
    target = Path(target)
    temp = partial_path(target)
    try:
        yield temp
    except BaseException as error:
        discard(temp)
        if isinstance(error, OSError):
            raise write_error(target, error) from error
        raise
    commit(temp, target)


def commit(temp: Path, target: Path) -> None:
    """Put the finished ``temp`` in place of ``target``; on failure remove it, raise OutputError."""
    try:
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())  # else a power cut after the rename can leave an empty file
        os.replace(temp, target)
    except OSError as error:
        discard(temp)
        raise write_error(target, error) from error


def discard(temp: Path) -> None:
    """Remove an unfinished temporary file, if it is there."""
    with contextlib.suppress(OSError):  # the error on its way out explains more than this one
        temp.unlink(missing_ok=True)


def write_error(target: Path, error: OSError) -> OutputError:
    """``could not write PATH: No space left on device``: the path and the OS's words."""
    return OutputError(f"could not write {target}: {error.strerror or error}")


def copy_file(source: Path, target: str | os.PathLike[str]) -> None:
    """Copy ``source`` to ``target`` atomically (see ``replacing``)."""
    with replacing(target) as temp:
        shutil.copyfile(source, temp)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see ``replacing``)."""
    with replacing(target) as temp:
        temp.write_bytes(data)
