"""``torchrun -m framepack.cli generate --parallel …`` on two gloo ranks (tiny models)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch.distributed as dist

from framepack import cli
from framepack.distributed.launch import join

FAST = ["--tiny", "--steps", "2", "--seconds", "0.8", "--window", "3", "--resolution", "64"]


def framepack(
    folder: Path, *arguments: str, ranks: int = 0, program: tuple[str, ...] = ("-m", "framepack.cli")
) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, *launcher, *program, "generate", *FAST, *arguments]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The ``error:`` lines of every rank and of torchrun itself."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]


def frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A queue of seeds 1 and 2 in one process, without torchrun: s-seed1.mp4, s-seed2.mp4."""
    folder = tmp_path_factory.mktemp("sequential")
    alone = framepack(folder, "--seeds", "1,2", "--crf", "0", "--out", "s.mp4")
    assert alone.returncode == 0, alone.stderr[-3000:]
    return folder


def test_jobs_parallel_writes_the_files_of_a_sequential_queue(tmp_path: Path, sequential: Path) -> None:
    together = framepack(tmp_path, "--seeds", "1,2", "--crf", "0", "--parallel", "jobs", "--out", "p.mp4", ranks=2)
    assert together.returncode == 0, together.stderr[-3000:]
    for seed in (1, 2):
        assert (tmp_path / f"p-seed{seed}.mp4").read_bytes() == (sequential / f"s-seed{seed}.mp4").read_bytes()


def test_ulysses_through_torchrun_rank_0_writes_the_video(tmp_path: Path, sequential: Path) -> None:
    together = framepack(tmp_path, "--seed", "1", "--crf", "0", "--parallel", "ulysses", "--out", "p.mp4", ranks=2)
    assert together.returncode == 0, together.stderr[-3000:]
    assert together.stdout.count("wrote ") == 1  # one rank writes
    a, b = frames(tmp_path / "p.mp4").astype(int), frames(sequential / "s-seed1.mp4").astype(int)
    # float rounding may move a chroma sample by a step, a few RGB levels (a wrong split moves them all, far)
    assert a.shape == b.shape and np.abs(a - b).max() <= 6 and np.abs(a - b).mean() < 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.mp4"]


def test_a_failing_rank_ends_the_run_with_one_error_line(tmp_path: Path) -> None:
    # rank 1 raises in its first transformer call while rank 0 waits for it in an all-to-all
    started = time.monotonic()
    failing = str(Path(__file__).with_name("distributed_failing_cli.py"))
    result = framepack(tmp_path, "--parallel", "ulysses", "--out", "p.mp4", ranks=2, program=(failing,))
    assert result.returncode != 0
    assert error_lines(result) == [
        "error: internal error: RuntimeError: rank 1 broke on purpose (run with --debug for the traceback)"
    ], result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # rank 0 wrote nothing
    assert time.monotonic() - started < 120  # nobody waited for a collective's timeout


@pytest.mark.parametrize("every_rank_draws_a_bar", [False, True])
def test_rank_0s_error_line_follows_a_bar_only_where_another_rank_draws_one(
    every_rank_draws_a_bar: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # rank 0 of ulysses/cfg draws the only bar (closed, with its newline, before its error);
    # under --parallel jobs every rank draws one. Rank 1's case: the failing-rank test above.
    cli._print_error("error: x", every_rank_draws_a_bar)
    assert capsys.readouterr().err == "error: x\n"  # no process group: one process, one terminal line
    join("gloo", 60, init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        cli._print_error("error: x", every_rank_draws_a_bar)
    finally:
        dist.destroy_process_group()
    assert capsys.readouterr().err == ("\nerror: x\n" if every_rank_draws_a_bar else "error: x\n")


@pytest.mark.parametrize("rank", ["0", "1"])
def test_arguments_every_rank_refuses_are_printed_by_rank_0_only(
    rank: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # before the process group exists, every rank of torchrun (RANK in its environment) meets the same arguments
    monkeypatch.setenv("RANK", rank)
    status = cli.main(["generate", *FAST, "--parallel", "jobs", "--out", "p.mp4"])
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    if rank == "0":
        assert status == 2 and len(printed) == 1 and printed[0].startswith("error: --parallel jobs spreads a queue")
    else:
        assert status == cli.ANOTHER_RANK_FAILED and printed == []
