"""Sequence (Ulysses) and CFG parallelism on gloo ranks give the single-process result.

Four ranks are spawned once for the whole module (``distributed_support.four_rank_cases``); each
case's result on every rank is compared with the same case run here, in this one process, by the
unchanged single-process path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from framepack.errors import ConfigError
from tests import distributed_support as support


@dataclasses.dataclass
class FourRanks:
    folder: Path
    codes: list[int | None]
    finished_at: float | None  # when the last rank ended
    references: dict[str, Any]

    def results(self, case: str, ranks: range | list[int]) -> list[Any]:
        missing = [rank for rank in ranks if not (self.folder / f"{case}_{rank}.pt").exists()]
        errors = {p.name: p.read_text()[-2000:] for p in self.folder.glob("error_*.txt")}
        assert not missing, f"{case}: no result from ranks {missing}; exit codes {self.codes}; {errors}"
        return [support.saved(self.folder, case, rank) for rank in ranks]


def single_process_references(folder: Path) -> dict[str, Any]:
    references: dict[str, Any] = {
        name: support.sample(support.tiny_model(case.heads), case.settings) for name, case in support.CASES.items()
    }
    for heads in (2, 4):
        model, inputs, prepared = support.uneven_batch(heads)
        references[f"uneven{heads}"] = model.denoise(inputs["latents"], inputs["timestep"], prepared)
        references["uneven_image_tokens"] = prepared.clean_tokens.shape[1] + prepared.noisy_tokens
    references["pipeline"] = support.pipeline_generate(folder / "alone")["latents"]
    return references


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory: pytest.TempPathFactory) -> FourRanks:
    folder = tmp_path_factory.mktemp("four_ranks")
    ranks = support.Spawned(support.four_rank_cases, support.WORLD, folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # while the ranks run, each on one thread: more would only contend for the cores
    try:
        references = single_process_references(folder)
    finally:
        torch.set_num_threads(threads)
    codes = ranks.wait(timeout_s=600)
    return FourRanks(folder, codes, ranks.finished_at, references)


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_ulysses_two_ranks_with_teacache(four_ranks: FourRanks) -> None:
    reference = four_ranks.references["ulysses2"]
    assert reference["skipped"] > 0  # the cache skipped calls, so its decisions are compared too
    for rank in four_ranks.results("ulysses2", [0, 1]):
        assert rank["skipped"] == reference["skipped"]
        assert close(rank["latents"], reference["latents"]) < 1e-5


def test_ulysses_four_ranks_with_teacache(four_ranks: FourRanks) -> None:
    reference = four_ranks.references["ulysses4"]
    assert reference["skipped"] > 0
    for rank in four_ranks.results("ulysses4", range(4)):
        assert rank["skipped"] == reference["skipped"]
        assert close(rank["latents"], reference["latents"]) < 1e-5


def test_ulysses_four_ranks_each_streaming_its_blocks(four_ranks: FourRanks) -> None:
    reference = four_ranks.references["ulysses4"]
    for rank in four_ranks.results("streamed4", range(4)):
        assert rank["streamed_bytes"] > 0  # the blocks came through each rank's own streamer
        assert rank["skipped"] == reference["skipped"]
        assert close(rank["latents"], reference["latents"]) < 1e-5


def test_cfg_two_ranks_with_teacache(four_ranks: FourRanks) -> None:
    reference = four_ranks.references["cfg2"]
    positive, negative = four_ranks.results("cfg2", [2, 3])
    assert reference["skipped"] > 0
    # each rank runs one branch's calls: the single process's skips are the two ranks' together
    assert positive["skipped"] + negative["skipped"] == reference["skipped"]
    for rank in (positive, negative):
        assert close(rank["latents"], reference["latents"]) < 1e-5


def test_cfg_times_ulysses_on_four_ranks(four_ranks: FourRanks) -> None:
    reference = four_ranks.references["cfg2x2"]
    ranks = four_ranks.results("cfg2x2", range(4))
    assert reference["skipped"] > 0
    assert ranks[0]["skipped"] == ranks[1]["skipped"] and ranks[2]["skipped"] == ranks[3]["skipped"]
    assert ranks[0]["skipped"] + ranks[2]["skipped"] == reference["skipped"]  # {0, 1} positive, {2, 3} negative
    for rank in ranks:
        assert close(rank["latents"], reference["latents"]) < 1e-5


def test_token_counts_that_do_not_divide_and_uneven_prompts(four_ranks: FourRanks) -> None:
    # a batch of 5- and 9-token prompts (a text mask on top of the padding) over 2 and over 4 ranks
    image_tokens = four_ranks.references["uneven_image_tokens"]
    assert image_tokens % 2 and image_tokens % 4
    for heads, ranks in ((2, [0, 1]), (4, range(4))):
        for output in four_ranks.results(f"uneven{heads}", ranks):
            assert close(output, four_ranks.references[f"uneven{heads}"]) < 1e-5


def test_every_rank_takes_group_rank_0s_cache_decision(four_ranks: FourRanks) -> None:
    # rank 2 (group rank 0 of the pair) would skip every other call, rank 3 would skip none
    reference = four_ranks.references["agree2"]
    assert reference["skipped"] > 0
    for rank in four_ranks.results("agree2", [2, 3]):
        assert rank["skipped"] == reference["skipped"]
        assert close(rank["latents"], reference["latents"]) < 1e-5


def test_pipeline_cfg_times_ulysses_streaming_only_rank_0_writes(four_ranks: FourRanks) -> None:
    ranks = four_ranks.results("pipeline", range(4))
    assert close(ranks[0]["latents"], four_ranks.references["pipeline"]) < 1e-5
    assert [rank["latents"] for rank in ranks[1:]] == [None, None, None]
    assert all(rank["streamed_bytes"] > 0 for rank in ranks)
    assert (four_ranks.folder / "pipeline_0" / "video.mp4").exists()
    assert not any((four_ranks.folder / f"pipeline_{rank}").exists() for rank in (1, 2, 3))


def test_a_hung_rank_ends_the_others_after_the_timeout(four_ranks: FourRanks) -> None:
    # the last case: rank 3 sleeps HANG_S instead of sampling in a 2x2 layout whose groups time out
    # after HANG_TIMEOUT_S; ranks 0-2 wait for it in an all-to-all or the branch exchange
    codes = four_ranks.codes
    assert codes[3] == 0 and all(code not in (0, None) for code in codes[:3]), codes
    hang_from = float((four_ranks.folder / "hang_from.txt").read_text())
    errors = [four_ranks.folder / f"error_{rank}.txt" for rank in range(3)]
    assert any("Timed out" in error.read_text() for error in errors)  # the others may see its partners end
    for error in errors:  # each gave up within the timeout (and a margin for a loaded machine), not at rank 3's end
        assert error.stat().st_mtime - hang_from < support.HANG_TIMEOUT_S + 18 < support.HANG_S


def test_heads_must_divide_over_the_ranks() -> None:
    from framepack.distributed.ulysses import UlyssesParallel

    parallel = UlyssesParallel.__new__(UlyssesParallel)
    parallel.size = 5
    with pytest.raises(ConfigError, match=r"24 attention heads .* 5 ranks.*\[1, 2, 3, 4, 6, 8, 12, 24\]"):
        parallel.check_heads(24)


def test_only_rank_0_streams_no_rank_extends_and_cfg_needs_real_cfg(tmp_path: Path) -> None:
    from framepack import FramePackPipeline
    from framepack.cli import demo_image
    from framepack.distributed.launch import Parallel

    pipe = FramePackPipeline.tiny()
    image = demo_image(64)
    pipe.use_parallel(Parallel("cfg", rank=1, world_size=2))  # no group: the refusals come before any collective
    with pytest.raises(ConfigError, match="rank 1 of a parallel run writes nothing; only rank 0 streams"):
        pipe.stream(image, "a dancer", support.PIPELINE_CONFIG, run_dir=tmp_path / "run")
    for rank in (0, 1):
        pipe.use_parallel(Parallel("ulysses", rank=rank, world_size=2))
        with pytest.raises(ConfigError, match="extension runs in one process, not under --parallel ulysses"):
            pipe.stream_extend(tmp_path / "source", 1.0, "a dancer", run_dir=tmp_path / "extended")
    for rank in (0, 1):  # CFG parallelism without real CFG: half the ranks would idle
        pipe.use_parallel(Parallel("cfg", rank=rank, world_size=2))
        with pytest.raises(ConfigError, match="parallel 'cfg' puts the two real-CFG branches .* real_cfg is 1"):
            pipe.generate(image, "a dancer", dataclasses.replace(support.PIPELINE_CONFIG, real_cfg=1.0),
                          run_dir=tmp_path / "run")  # fmt: skip
    for rank in (0, 1):  # a resume on any rank: rank 0's stream would wait for ranks that refused it
        pipe.use_parallel(Parallel("ulysses", rank=rank, world_size=2))
        call = pipe.stream if rank == 0 else pipe.generate
        with pytest.raises(ConfigError, match="a parallel run cannot be resumed"):
            call(image, "a dancer", support.PIPELINE_CONFIG, resume=tmp_path / "run")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("rank", ["0", "1"])
def test_before_the_group_only_errors_every_rank_meets_are_left_to_rank_0(
    rank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from framepack.distributed.launch import reports_failure

    monkeypatch.setenv("RANK", rank)
    assert reports_failure(same_on_every_rank=True) == (rank == "0")  # the arguments: rank 0 says it
    assert reports_failure(same_on_every_rank=False)  # joining, a file one node lacks: each rank says its own
