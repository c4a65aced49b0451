"""The framepack command against hostile files and folders (issue 13), run as a user runs it.

Each case runs ``python -m framepack.cli generate`` in a process of its own next to files of
the user's. Every one must end with exit code 2, one ``error:`` line on stderr and no traceback,
and leave every file the user had byte for byte as it was. The processes are forked from one
warm Python (tests/forked_command.py): starting Python with torch would be most of each one's time.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from framepack import atomic
from framepack.cli import main
from framepack.rundir import MARKER_FILE, RunDirLock
from tests.forked_command import ROOT, CommandServer, Finished

# One section of the tiny model: only two cases get as far as generating.
FAST = ["--tiny", "--seconds", "0.4", "--window", "3", "--steps", "2", "--resolution", "64"]
GENERATE = ["-m", "framepack.cli", "generate", *FAST]
# An honest full disk: files may not grow past 64 KiB, writes past it fail with EFBIG.
FULL_DISK = ["-c", textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    from framepack.cli import main
    sys.exit(main(sys.argv[1:]))
"""), "generate", *FAST]  # fmt: skip
HOLD_LOCK = "import sys, time; from pathlib import Path; from framepack.rundir import RunDirLock; held = RunDirLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(300)"


def user_files(folder: Path) -> None:
    """What a user might keep in a folder they point the command at by mistake."""
    (folder / "frames").mkdir(parents=True)
    (folder / "video.mp4").write_bytes(b"the user's own video")
    (folder / "frames" / "chunk_00000.npy").write_bytes(b"the user's own array")
    (folder / "state-0001.safetensors").write_bytes(b"the user's own weights")


def our_run(folder: Path, **state: object) -> Path:
    """A folder marked as a run of ours, whose state.json holds ``state`` over valid defaults."""
    folder.mkdir(parents=True)
    (folder / MARKER_FILE).write_text(json.dumps({"format": 1}))
    record = {
        "format": 1,
        "fingerprint": {},
        "sections_done": 1,
        "tensors": "state-0001.safetensors",
        "frame_chunks": [],
    }
    (folder / "state.json").write_text(json.dumps({**record, **state}))
    return folder


def case_args(name: str, root: Path) -> tuple[list[str], str]:
    """Set up case ``name`` under ``root``; return its command line and the start of its error."""
    out = ["--out", str(root / "out.mp4"), "--overwrite"]  # the user lets the old video go: the fault must not
    if name == "run-dir-of-the-users":
        user_files(root / "mine")
        return [*GENERATE, *out, "--run-dir", str(root / "mine")], "is not empty and holds no framepack run"
    if name == "resume-of-the-users":
        user_files(root / "mine")
        return [*GENERATE, *out, "--resume", str(root / "mine")], "cannot resume"
    if name == "run-dir-is-a-file":
        (root / "notes.txt").write_text("notes")
        return [*GENERATE, *out, "--run-dir", str(root / "notes.txt")], "run directory"
    if name == "resume-is-a-file":
        (root / "notes.txt").write_text("notes")
        return [*GENERATE, *out, "--resume", str(root / "notes.txt")], "run directory"
    if name == "chunk-outside-the-run":
        np.save(root / "secret.npy", np.zeros((1, 64, 64, 3), np.uint8))
        run = our_run(root / "run", frame_chunks=["../../secret.npy"])
        return [*GENERATE, *out, "--resume", str(run)], "expected 'frame_chunks'"
    if name == "absolute-tensors-path":
        (root / "weights.safetensors").write_bytes(b"the user's own weights")
        run = our_run(root / "run", tensors=str(root / "weights.safetensors"))
        return [*GENERATE, *out, "--resume", str(run)], "expected 'tensors'"
    if name == "string-for-an-int":
        run = our_run(root / "run", sections_done="1")
        return [*GENERATE, *out, "--resume", str(run)], "expected 'sections_done' to be an integer >= 1, got '1'"
    if name == "truncated-state":
        run = our_run(root / "run")
        (run / "state.json").write_text('{"format": 1, "fingerp')
        return [*GENERATE, *out, "--resume", str(run)], "cannot read the run state"
    if name == "full-disk":
        return [*FULL_DISK, *out, "--run-dir", str(root / "run")], "could not write"
    raise AssertionError(name)


CASES = [
    "run-dir-of-the-users", "resume-of-the-users", "run-dir-is-a-file", "resume-is-a-file", "chunk-outside-the-run",
    "absolute-tensors-path", "string-for-an-int", "truncated-state", "full-disk", "locked",
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict, Finished, str]]:
    """Every case run once: its files before and after, how the command ended, the error expected."""
    base = tmp_path_factory.mktemp("hostile")
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}  # the bar is not under test
    jobs: dict[str, tuple[Path, list[str], str]] = {}
    for name in CASES:
        root = base / name
        root.mkdir()
        (root / "out.mp4").write_bytes(b"the video the user made yesterday")
        if name == "locked":
            continue
        command, message = case_args(name, root)
        jobs[name] = (root, command, message)
    locked = base / "locked" / "run"
    locked.mkdir()
    (locked / MARKER_FILE).write_text(json.dumps({"format": 1}))  # a run of ours, in progress elsewhere
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(locked)], stdout=subprocess.PIPE, env=env, text=True
    )
    server = CommandServer(env)
    try:
        assert holder.stdout.readline() == "locked\n"
        jobs["locked"] = (base / "locked", [*GENERATE, "--out", str(base / "locked" / "out.mp4"), "--overwrite", "--run-dir", str(locked)],
                          f"run directory {locked} is in use by another framepack run (pid {holder.pid})")  # fmt: skip
        before = {name: snapshot(root) for name, (root, _, _) in jobs.items()}

        ended = server.run([(command, root) for root, command, _ in jobs.values()], workers=3, timeout=300)
        done = dict(zip(jobs, ended))
        after = {name: snapshot(root) for name, (root, _, _) in jobs.items()}  # before the lock check below writes
    finally:
        server.close()
        holder.kill()  # SIGKILL: the OS drops its lock
        holder.wait()
    RunDirLock(locked).release()  # no stale lock survives the killed holder
    return {name: (before[name], after[name], done[name], jobs[name][2]) for name in jobs}


@pytest.mark.parametrize("name", CASES)
def test_hostile_files_cost_the_user_nothing(runs, name: str) -> None:
    before, after, done, message = runs[name]
    assert done.returncode == (1 if name == "full-disk" else 2), done.stderr  # a full disk is a fault, not bad input
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert message in done.stderr
    assert {k: v for k, v in after.items() if k in before} == before  # every file the user had, untouched
    assert not [k for k in after if ".partial" in k]  # and no half-written file left anywhere


def test_a_full_disk_names_the_file_and_the_reason(runs) -> None:
    _, _, done, _ = runs["full-disk"]
    assert "File too large" in done.stderr


def test_a_finished_run_whose_video_could_not_be_saved_says_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills up as the finished video is copied to --out: the run folder is kept for a resume."""
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the video the user made yesterday")

    copyfile = shutil.copyfile

    def full_disk(source: Path, target: Path) -> None:
        if Path(target).parent == tmp_path:  # the copy to --out only; the run folder's files are written
            raise OSError(errno.ENOSPC, "No space left on device")
        copyfile(source, target)

    monkeypatch.setattr(atomic.shutil, "copyfile", full_disk)
    assert main(["generate", *FAST, "--out", str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # below the progress bar
    assert err.startswith(f"error: could not write {out}: No space left on device"), err
    kept = err.partition("continue with --resume ")[2].rstrip(")")
    assert (Path(kept) / "video.mp4").exists()  # a resume writes the video again, elsewhere
    assert out.read_bytes() == b"the video the user made yesterday"
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    shutil.rmtree(kept)
