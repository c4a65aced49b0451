"""Sequence (Ulysses) and CFG parallelism on gloo ranks give the single-process result."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from framepack.errors import ConfigError
from tests import distributed_support as support


def results(folder: Path, world: int) -> list[dict]:
    return [torch.load(folder / f"rank_{rank}.pt", weights_only=False) for rank in range(world)]


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def run_ok(worker: support.Worker, world: int, folder: Path, timeout_s: float = 60.0) -> list[dict]:
    codes = support.spawn(worker, world, folder, timeout_s=timeout_s)
    errors = {p.name: p.read_text() for p in folder.glob("error_*.txt")}
    assert codes == [0] * world, errors
    return results(folder, world)


def test_ulysses_two_ranks_with_teacache_matches_one_process(tmp_path: Path) -> None:
    ranks = run_ok(support.sampling_worker("ulysses", cache="teacache:0.3"), 2, tmp_path)
    reference = ranks[0]["reference"]
    assert reference["skipped"] > 0  # the cache skipped calls, so its decisions are compared too
    for rank in ranks:
        assert rank["parallel"]["skipped"] == reference["skipped"]
        assert close(rank["parallel"]["latents"], reference["latents"]) < 1e-5


def test_ulysses_uneven_prompts_and_token_counts(tmp_path: Path) -> None:
    # 203 image tokens and 5 + 9 context tokens: padding on every stream, a text mask on top
    ranks = run_ok(support.uneven_batch_worker, 2, tmp_path)
    for rank in ranks:
        assert close(rank["parallel"], rank["reference"]) < 1e-5


def test_cfg_two_ranks_matches_one_process(tmp_path: Path) -> None:
    ranks = run_ok(support.sampling_worker("cfg", real_cfg=3.0, distilled_cfg=1.0, cache="teacache:0.3"), 2, tmp_path)
    for rank in ranks:
        assert close(rank["parallel"]["latents"], rank["reference"]["latents"]) < 1e-5


def test_a_failing_rank_ends_every_rank(tmp_path: Path) -> None:
    started = time.monotonic()
    codes = support.spawn(support.failing_worker, 2, tmp_path)
    assert codes[0] not in (0, None) and codes[1] not in (0, None)  # nobody hangs, nobody succeeds
    assert "rank 1 broke on purpose" in (tmp_path / "error_1.txt").read_text()
    assert (tmp_path / "error_0.txt").exists()  # rank 0's collective failed instead of waiting
    assert time.monotonic() - started < 60


def test_heads_must_divide_over_the_ranks() -> None:
    from framepack.distributed.ulysses import UlyssesParallel

    parallel = UlyssesParallel.__new__(UlyssesParallel)
    parallel.size = 5
    with pytest.raises(ConfigError, match=r"24 attention heads .* 5 ranks.*\[1, 2, 3, 4, 6, 8, 12, 24\]"):
        parallel.check_heads(24)


def test_pipeline_cfg_parallel_only_rank_0_writes(tmp_path: Path) -> None:
    ranks = run_ok(support.pipeline_worker, 2, tmp_path, timeout_s=180)
    assert close(ranks[0]["together"], ranks[0]["alone"]) < 1e-5
    assert ranks[1]["together"] is None
    assert (tmp_path / "together_0" / "video.mp4").exists()
    assert not (tmp_path / "together_1").exists()
