"""Output files appear whole or not at all: write beside the target, then rename into place.

A full disk, a killed process or a writer's error mid-file must never leave a truncated
file at the target, nor destroy the file already there before the new one is complete.
Every output (videos, previews, frame chunks, run state) is therefore written to a hidden
temporary file in the target's folder (same file system, so the rename is atomic), flushed
to disk, and ``os.replace``-d over the target. On failure the temporary file is removed.

A caller that must not replace anything (``overwrite=False``: a user's ``--out`` without
``--overwrite``) publishes with ``os.link`` instead, which fails if any file is at the target
at that very moment: a file that appeared after the caller's own check is kept, not replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, OutputExistsError

# What ``os.link`` fails with where the file system has no hard links: FAT, exFAT, some network
# and FUSE mounts give EPERM (Linux) or ENOTSUP/EOPNOTSUPP (macOS, FUSE); ENOSYS, EXDEV and
# EMLINK come from a few FUSE and overlay mounts.
NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK})


def partial_path(target: Path) -> Path:
    """A fresh hidden name beside ``target`` that keeps its suffix (PyAV picks the container by it)."""
    return target.with_name(f".{target.stem}.{secrets.token_hex(4)}.partial{target.suffix}")


@contextmanager
def replacing(target: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends cleanly, it becomes ``target``.

    Any error removes the temporary file and leaves ``target`` as it was; an ``OSError``
    (say "No space left on device") is raised as an ``OutputError`` naming ``target``.
    ``overwrite=False``: a file at ``target`` when the block ends is kept (see ``commit``).
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
    commit(temp, target, overwrite=overwrite)


def commit(temp: Path, target: Path, *, overwrite: bool = True) -> None:
    """Put the finished ``temp`` in place of ``target``; on failure remove it, raise OutputError.

    ``overwrite=False``: only where no file is at ``target`` (decided as the file appears, see
    ``publish_new``); else ``temp`` is removed, ``target`` kept and OutputExistsError raised.
    """
    try:
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())  # else a power cut after the rename can leave an empty file
        if overwrite:
            os.replace(temp, target)
        else:
            publish_new(temp, target)
    except OSError as error:
        discard(temp)
        raise write_error(target, error) from error


def publish_new(temp: Path, target: Path) -> None:
    """Give the finished ``temp`` the name ``target`` unless a file (or link) has that name.

    ``os.link`` checks and creates the name in one step, so no file can slip in between; the
    hidden name is dropped afterwards. Raises OutputExistsError (``temp`` removed) if taken.
    """
    try:
        os.link(temp, target)
    except FileExistsError:
        discard(temp)
        raise exists_error(target) from None
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        # No hard links on this file system: check, then rename. A file created between the
        # two is replaced; that window, narrow as it is, is what the link closes elsewhere.
        if os.path.lexists(target):
            discard(temp)
            raise exists_error(target) from None
        os.replace(temp, target)
        return
    discard(temp)  # the video is in place under both names; the hidden one goes


def exists_error(target: str | Path, hint: str = "it is left as it was", *, what: str = "") -> OutputExistsError:
    """``WHAT: expected a new file, but 'x.mp4' exists (HINT)``: every refusal of a taken name reads so."""
    prefix = f"{what}: " if what else ""
    return OutputExistsError(f"{prefix}expected a new file, but {str(target)!r} exists ({hint})")


def discard(temp: Path) -> None:
    """Remove an unfinished temporary file, if it is there."""
    with contextlib.suppress(OSError):  # the error on its way out explains more than this one
        temp.unlink(missing_ok=True)


def write_error(target: Path, error: OSError) -> OutputError:
    """``could not write PATH: No space left on device``: the path and the OS's words."""
    return OutputError(f"could not write {target}: {error.strerror or error}")


def copy_file(source: Path, target: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Copy ``source`` to ``target`` atomically (see ``replacing``, also for ``overwrite``)."""
    with replacing(target, overwrite=overwrite) as temp:
        shutil.copyfile(source, temp)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see ``replacing``)."""
    with replacing(target) as temp:
        temp.write_bytes(data)
