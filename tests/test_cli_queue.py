"""Batches and queues: --seeds, --count, --jobs FILE; failures reported, the queue goes on and resumes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from framepack import atomic
from framepack.cli import main
from framepack.run_settings import read_settings
from framepack.runstate import load_run_state
from tests.queue_support import ONE_SECTION, run_frames


def test_seeds_make_one_video_per_seed_and_spare_an_output_the_queue_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "a-seed9.mp4"
    mine.write_bytes(b"the user's own video")
    out = tmp_path / "a.mp4"
    assert main(["generate", *ONE_SECTION, "--prompt", "x", "--seeds", "4,9,2", "--out", str(out)]) == 2
    assert mine.read_bytes() == b"the user's own video"
    assert error_lines(capsys.readouterr().err) == [
        f"error: job seed 9: --out {mine} exists and was not made by this queue; move it, give another out or --overwrite"
    ]
    assert [read_settings(tmp_path / f"a-seed{s}.mp4")["config"]["seed"] for s in (4, 2)] == [4, 2]
    assert not out.exists()
    state = json.loads((tmp_path / "a.queue" / "queue.json").read_text())["jobs"]
    assert {name: entry["status"] for name, entry in state.items()} == {
        "seed4": "done",
        "seed9": "failed",
        "seed2": "done",
    }

    # --overwrite lets the user's file go: the failed job runs, the finished ones are not run again.
    assert main(["generate", *ONE_SECTION, "--prompt", "x", "--seeds", "4,9,2", "--out", str(out), "--overwrite"]) == 0
    assert read_settings(mine)["config"]["seed"] == 9
    assert f"queue {tmp_path / 'a.queue'}: 3 of 3 jobs done (2 before this run), 0 failed" in capsys.readouterr().out


def test_a_file_that_appears_at_a_jobs_out_while_it_runs_is_kept_and_never_taken_for_the_queues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, theirs = tmp_path / "a.mp4", tmp_path / "a-seed9.mp4"
    copy = atomic.shutil.copyfile

    def copy_then_the_users_file(source: Path, target: Path) -> None:  # after the job's check, before its save
        copy(source, target)
        if Path(target).name.startswith(".a-seed9."):
            theirs.write_bytes(b"the user's own video")

    monkeypatch.setattr(atomic.shutil, "copyfile", copy_then_the_users_file)
    seeds = ["generate", *ONE_SECTION, "--prompt", "x", "--seeds", "4,9", "--out", str(out)]
    assert main(seeds) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: job seed 9: --out: expected a new file, but {str(theirs)!r} exists (give another --out, or --overwrite)"
    ]
    assert theirs.read_bytes() == b"the user's own video"
    assert read_settings(tmp_path / "a-seed4.mp4")["config"]["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-seed4.mp4", "a-seed9.mp4", "a.queue"]
    state = json.loads((tmp_path / "a.queue" / "queue.json").read_text())
    assert state["outputs"] == [str(tmp_path / "a-seed4.mp4")]

    # Run again: the file is the user's, not an output of the queue to replace.
    monkeypatch.undo()
    assert main(seeds) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: job seed 9: --out {theirs} exists and was not made by this queue; move it, give another out or --overwrite"
    ]
    assert theirs.read_bytes() == b"the user's own video"


def error_lines(err: str) -> list[str]:
    """The lines of stderr that are not the progress bar's (which draws with carriage returns)."""
    return [line for line in err.replace("\r", "\n").splitlines() if "error" in line]


def test_count_takes_the_seeds_from_seed_on(tmp_path: Path) -> None:
    out = tmp_path / "b.mp4"
    assert (
        main(
            [
                "generate",
                *ONE_SECTION,
                "--seed",
                "20",
                "--count",
                "2",
                "--out",
                str(out),
                "--queue-dir",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["b-seed20.mp4", "b-seed21.mp4"]
    assert read_settings(tmp_path / "b-seed21.mp4")["config"]["seed"] == 21
    assert (tmp_path / "q" / "queue.json").exists()


def write_jobs(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_a_failing_job_is_reported_and_the_queue_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"prompt": "first", "seed": 1},
        {"prompt": "second", "steps": 0},
        "",
        {"prompt": "third", "negative-prompt": "blur", "real_cfg": 2.0, "out": str(tmp_path / "third.mp4")},
    )
    assert main(["generate", *ONE_SECTION, "--jobs", str(jobs), "--out", str(tmp_path / "v.mp4")]) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: job {jobs} line 2: steps: expected an int >= 1, got 0"]
    first, third = read_settings(tmp_path / "v-line1.mp4"), read_settings(tmp_path / "third.mp4")
    assert (first["inputs"]["prompt"], first["config"]["seed"]) == ("first", 1)
    assert (third["inputs"]["prompt"], third["inputs"]["negative_prompt"], third["config"]["real_cfg"]) == (
        "third",
        "blur",
        2.0,
    )
    assert not (tmp_path / "v-line2.mp4").exists()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a"}', '{"prompt": "b",}'], "line 2: not valid JSON"),
        ([{"prompt": "a", "sead": 4}], "line 1: unknown key 'sead'"),
        ([{"prompt": "a"}, {"tiny": False}], "line 2: 'tiny' is the queue's"),
        ([{"prompt": "a"}, {"mode": "forward"}], "line 2: 'mode' is the queue's"),
        ([{"prompt": 5}], "line 1: 'prompt' expected a string, got 5"),
        ([[1, 2]], "line 1: expected a JSON object"),
    ],
)
def test_a_bad_jobs_file_is_one_error_before_any_job(
    lines: list[object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", *lines)
    assert main(["generate", *ONE_SECTION, "--jobs", str(jobs), "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --jobs {jobs} {message}") and err.count("\n") == 1
    assert not list(tmp_path.glob("*.mp4"))


def test_a_killed_queue_resumes_where_it_stopped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Killed in its second job after a section: run again, job 1 is left alone, job 2 resumes from its section."""
    arguments = ["--tiny", "--window", "1", "--steps", "2", "--resolution", "32", "--seconds", "0.4"]  # 3 sections
    command = [*arguments, "--seeds", "1,2", "--out", str(tmp_path / "v.mp4")]
    process = subprocess.Popen([sys.executable, "-m", "framepack.cli", "generate", *command],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "v.queue" / "runs").glob("seed2-*/state.json")):
            assert process.poll() is None, "the queue ended before its second job saved a section"
            assert time.monotonic() < deadline, "the second job saved no section within three minutes"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    first = tmp_path / "v-seed1.mp4"
    assert first.exists() and not (tmp_path / "v-seed2.mp4").exists()
    (run_dir,) = (tmp_path / "v.queue" / "runs").glob("seed2-*")
    before = os.stat(first)
    done = load_run_state(run_dir).sections_done
    assert 1 <= done < 3

    caplog.set_level(logging.INFO, logger="framepack")
    assert main(["generate", *command]) == 0
    # Equal frames alone would not tell a resume from a restart: the run said it skipped its finished sections.
    assert f"resuming {run_dir} after {done} of 3 sections" in caplog.messages
    after = os.stat(first)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # job 1 was not done again
    assert read_settings(tmp_path / "v-seed2.mp4")["config"]["seed"] == 2
    # Job 2 resumed in its own folder to the frames of a run never interrupted.
    whole = tmp_path / "whole"
    assert main(["generate", *arguments, "--seed", "2", "--out", str(tmp_path / "w.mp4"), "--run-dir", str(whole)]) == 0
    assert np.array_equal(run_frames(run_dir), run_frames(whole))


def test_an_output_written_before_a_kill_is_still_the_queues(tmp_path: Path) -> None:
    """Killed after a job wrote its video but before queue.json said done (the entry still
    "running", as a rerun with other arguments also leaves it): the queue makes it again."""
    out, queue = tmp_path / "k.mp4", tmp_path / "k.queue" / "queue.json"
    command = ["generate", *ONE_SECTION, "--prompt", "x", "--seeds", "4", "--out", str(out)]
    assert main(command) == 0
    state = json.loads(queue.read_text())
    state["jobs"]["seed4"]["status"] = "running"
    queue.write_text(json.dumps(state))
    made = tmp_path / "k-seed4.mp4"
    before = os.stat(made)
    assert main(command) == 0  # redone, not refused as another's file
    assert os.stat(made).st_mtime_ns != before.st_mtime_ns
    assert json.loads(queue.read_text())["jobs"]["seed4"]["status"] == "done"


def test_placement_flags_that_leave_the_video_as_it_is_redo_no_job(tmp_path: Path) -> None:
    command = ["generate", *ONE_SECTION, "--prompt", "x", "--seeds", "4", "--out", str(tmp_path / "p.mp4")]
    assert main(command) == 0
    before = os.stat(tmp_path / "p-seed4.mp4")
    assert main([*command, "--mmap"]) == 0
    after = os.stat(tmp_path / "p-seed4.mp4")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_hand_edited_queue_state_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queue = tmp_path / "e.queue" / "queue.json"
    queue.parent.mkdir()
    queue.write_text(json.dumps({"format": 1, "jobs": {"seed4": "done"}}))
    command = ["generate", *ONE_SECTION, "--prompt", "x", "--seeds", "4", "--out", str(tmp_path / "e.mp4")]
    assert main(command) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {queue}: expected job 'seed4' as an object with an \"out\" path, got 'done'"
    ]
