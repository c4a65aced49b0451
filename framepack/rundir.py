"""Which folder a run may use, and keeping a second run out of it while it does.

A run writes ``video.mp4``, ``frames/chunk_*.npy`` and ``state-*.safetensors`` into its
folder, and deletes older state files there. So it only ever uses a folder that is new or
empty, or that holds a run of ours: one with the marker ``framepack-run.json`` a run writes
when it first takes a folder. Anything else is the user's, and is refused untouched.

While a run uses its folder it holds an OS lock on ``framepack-run.lock`` (``flock`` on POSIX,
``msvcrt.locking`` on Windows). The OS drops it when the process ends, even on SIGKILL, so no
stale lock survives a crash; a second run of the same folder meanwhile is refused.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .atomic import discard, write_bytes
from .errors import InputError, OutputError
from .runstate import STATE_FILE

MARKER_FILE = "framepack-run.json"
LOCK_FILE = "framepack-run.lock"
_MARKER_FORMAT = 1
_WINDOWS_LOCK_OFFSET = 64  # Windows locks bytes: lock one past the pid, so the pid stays readable


class RunDirLock:
    """An OS lock on a run directory; ``release`` it when the run ends (closing the file does too)."""

    def __init__(self, run_dir: Path) -> None:
        path = run_dir / LOCK_FILE
        try:
            self._file = open(path, "a+b", buffering=0)  # noqa: SIM115 (held while the run holds the lock)  # appends: never clobbers the holder's pid before locking
        except OSError as error:
            raise OutputError(f"could not open the lock file {path}: {error.strerror or error}") from error
        try:
            _lock(self._file.fileno())
        except OSError:
            self._file.seek(0)
            holder = self._file.read(20).decode("ascii", "replace").strip() or "unknown"
            self._file.close()
            raise InputError(
                f"run directory {run_dir} is in use by another framepack run (pid {holder}); "
                "wait for it to end, or use another folder"
            ) from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()).encode("ascii"))

    def release(self) -> None:
        """Let other runs use the folder; calling it again does nothing."""
        if not self._file.closed:
            _unlock(self._file.fileno())
            self._file.close()


def claim_run_dir(run_dir: Path, *, resume: bool) -> RunDirLock:
    """Check that ``run_dir`` may hold this run, lock it and mark it as ours; return the lock.

    resume  the folder must hold a run of ours with a finished section (``state.json``);
            otherwise it must not exist, be empty, or hold a run of ours with none finished.
    Raises InputError, with the folder left as it was, when it may not be used.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run directory {run_dir}: expected a folder, found a file")
    if resume:
        if not (run_dir / STATE_FILE).is_file():
            raise InputError(f"cannot resume {run_dir}: expected a run directory with {STATE_FILE}, found none")
        if not is_marked(run_dir):
            raise InputError(f"cannot resume {run_dir}: it has no {MARKER_FILE}, so it holds no framepack run")
    else:
        _check_new_run(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"could not create the run directory {run_dir}: {error.strerror or error}") from error
        if not is_marked(run_dir):  # marked before the lock file exists, while still new or empty: now it is ours
            marker = {"format": _MARKER_FORMAT, "written_by": "framepack: a run directory (see framepack.rundir)"}
            write_bytes(run_dir / MARKER_FILE, json.dumps(marker).encode("utf-8"))
    lock = RunDirLock(run_dir)
    try:
        if not resume:
            _check_new_run(run_dir)  # again: another run may have finished a section before we locked
        for stale in run_dir.rglob(".*.partial.*"):  # temporary files of a run killed mid-write (framepack.atomic)
            discard(stale)
    except BaseException:
        lock.release()
        raise
    return lock


def is_marked(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds our marker; a marker that is not ours to read is an InputError."""
    path = run_dir / MARKER_FILE
    if not path.exists():
        return False
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the run directory marker {path}: {error}") from error
    if not isinstance(marker, dict) or marker.get("format") != _MARKER_FORMAT or isinstance(marker.get("format"), bool):
        raise InputError(f"{path}: expected a framepack run marker of format {_MARKER_FORMAT}, got {marker!r:.60}")
    return True


def _check_new_run(run_dir: Path) -> None:
    if not run_dir.is_dir():
        return
    if not is_marked(run_dir):
        if any(run_dir.iterdir()):
            raise InputError(
                f"run directory {run_dir} is not empty and holds no framepack run (no {MARKER_FILE}); "
                "give a new or empty folder (nothing in it was changed)"
            )
    elif (run_dir / STATE_FILE).exists():
        raise InputError(
            f"run_dir {run_dir} already holds a run: continue it with resume={str(run_dir)!r}, or give an empty folder"
        )


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
