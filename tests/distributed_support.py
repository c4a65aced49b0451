"""Spawned gloo process groups for the distributed tests.

One group of four ranks is spawned once and runs every case in turn (``four_rank_cases``): first
two 2-rank cases at a time on the pairs {0, 1} and {2, 3}, then the 4-rank ones, last a rank that
hangs. Each rank saves what it computed, per case, to a folder the tests read (or the error it
raised); the tests compare it with the same case run in their own single process (``CASES``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from framepack.cache.base import CachePolicy, CacheStep
from framepack.conditioning import Conditioning
from framepack.config import GenerationConfig
from framepack.distributed.cfg import CfgParallel
from framepack.distributed.launch import join, plan
from framepack.distributed.sequence import sequence_parallel
from framepack.memory.streamer import block_nbytes, minimum_budget
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.loop import stream_latents
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_

Worker = Callable[[int, Path], None]
WORLD = 4
GROUP_TIMEOUT_S = 120.0  # rank 0 decodes a section while the others wait for it (in a loaded CI: long)
HANG_TIMEOUT_S = 3.0  # the groups of the last case, where rank 3 hangs
HANG_S = 25.0  # long past the others' timeout and margin, so that they cannot have waited for it


class Spawned:
    """Ranks running ``worker(rank, folder)`` in a gloo group of ``world``, started without waiting."""

    def __init__(self, worker: Worker, world: int, folder: Path) -> None:
        self.folder = folder
        self._context = mp.start_processes(
            _entry, args=(world, str(folder), worker), nprocs=world, join=False, start_method="spawn"
        )
        self.finished_at: float | None = None  # time.time() when the last rank ended
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        for process in self._context.processes:
            process.join()
        self.finished_at = time.time()

    def wait(self, timeout_s: float) -> list[int | None]:
        """The exit code of each rank (None: still running after ``timeout_s``, then killed)."""
        self._watcher.join(timeout_s)
        codes = [process.exitcode for process in self._context.processes]
        for process in self._context.processes:  # a hung rank must not outlive the test
            if process.exitcode is None:
                process.kill()
        return codes


def _entry(rank: int, world: int, folder: str, worker: Worker) -> None:
    torch.set_num_threads(1)
    try:
        join("gloo", GROUP_TIMEOUT_S, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
        worker(rank, Path(folder))
        dist.destroy_process_group()
    except BaseException:
        (Path(folder) / f"error_{rank}.txt").write_text(traceback.format_exc())
        raise


def saved(folder: Path, case: str, rank: int) -> Any:
    return torch.load(folder / f"{case}_{rank}.pt", weights_only=False)


def _save(folder: Path, case: str, rank: int, result: Any) -> None:
    torch.save(result, folder / f"{case}_{rank}.pt")


# --- the cases, as one process runs them ----------------------------------------------------


def tiny_model(heads: int) -> FramePackTransformer:
    torch.manual_seed(0)
    model = FramePackTransformer(TransformerConfig.preset("tiny", num_attention_heads=heads)).eval()
    randomise_(model, 3)
    return model


def prompt(seed: int, tokens: int, guidance: float) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(
        text_embeds=torch.randn(1, 6, 32, generator=g),
        text_mask=torch.arange(6)[None] < tokens,
        pooled=torch.randn(1, 16, generator=g),
        guidance=torch.tensor([guidance]),
        image_embeds=torch.randn(1, 5, 24, generator=g),
    )


class RankBiasedCache(CachePolicy):
    """Skips every other call on global rank ``skipper`` (and in a process without a group), computes
    every call on the other ranks: ranks that took their own decisions would run different collectives."""

    def __init__(self, skipper: int) -> None:
        super().__init__()
        self.skipper = skipper

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        rank = dist.get_rank() if dist.is_initialized() else self.skipper
        return rank != self.skipper or step.step % 2 == 0


@dataclasses.dataclass(frozen=True)
class SamplingCase:
    heads: int
    settings: dict[str, Any]


CASES = {
    # 10x14 latents: 35 tokens a frame, so the image stream's length does not divide by 2 or 4
    "ulysses2": SamplingCase(2, {"cache": "teacache:0.3"}),
    "cfg2": SamplingCase(2, {"cache": "teacache:2.0", "real_cfg": 3.0, "distilled_cfg": 1.0}),
    "agree2": SamplingCase(2, {"cache": RankBiasedCache(skipper=2)}),  # group rank 0 of the pair {2, 3}
    "ulysses4": SamplingCase(4, {"cache": "teacache:1.0"}),
    "cfg2x2": SamplingCase(2, {"cache": "teacache:2.0", "real_cfg": 3.0, "distilled_cfg": 1.0}),
}


def sample(
    model: FramePackTransformer, settings: dict[str, Any], branches: CfgParallel | None = None
) -> dict[str, Any]:
    """Five sections of a 10x14 latent video; the last history and the cache's skipped calls."""
    config = GenerationConfig(seconds=2.0, window=3, steps=4, seed=7, **settings)
    start = torch.randn(1, 16, 1, 10, 14, generator=torch.Generator().manual_seed(5))
    negative = prompt(2, 3, config.distilled_cfg) if config.real_cfg != 1.0 else None
    results = list(
        stream_latents(model, prompt(1, 5, config.distilled_cfg), start, config, negative=negative, branches=branches)
    )
    return {
        "latents": results[-1].history,
        "skipped": sum(r.cache_stats.skipped_count for r in results if r.cache_stats is not None),
    }


def uneven_batch(heads: int) -> tuple[FramePackTransformer, dict[str, Any], Any]:
    """A batch of two prompts of 5 and 9 text tokens, prepared for one transformer call."""
    model = tiny_model(heads)
    inputs = make_inputs(2, [5, 9], seed=2)
    conditioning, context = conditioning_and_context(inputs)
    return model, inputs, model.prepare(conditioning, context, inputs["latents"].shape)


def _uneven_batch_parallel(heads: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    model, inputs, prepared = uneven_batch(heads)
    with sequence_parallel(model, group):
        return model.denoise(inputs["latents"], inputs["timestep"], prepared)


def streamed(model: FramePackTransformer) -> FramePackTransformer:
    """``model`` streaming its blocks through the smallest budget (each rank streams its own copy)."""
    sizes = [block_nbytes(block) for block in model.streamable_blocks()]
    model.enable_streaming("cpu", minimum_budget(sizes, 1), prefetch=1)
    return model


PIPELINE_CONFIG = GenerationConfig(
    window=3, steps=3, resolution=64, seconds=0.4, real_cfg=2.0, distilled_cfg=1.0
)  # one section


def pipeline_generate(run_dir: Path, parallel: Any = None, *, streaming: bool = False) -> Any:
    """The API: the tiny pipeline with an 8-head transformer; ``streaming`` gives it the smallest
    budget, which streams the transformer's blocks."""
    from framepack import FramePackPipeline
    from framepack.cli import demo_image
    from tests.test_pipeline_memory import smallest_budget_gb, wide_components

    pipe = FramePackPipeline(wide_components())
    if streaming:
        plan_ = pipe.set_vram_budget(
            smallest_budget_gb(pipe), resolution=PIPELINE_CONFIG.resolution, window=PIPELINE_CONFIG.window
        )
        assert plan_.streaming["transformer"].streamed, "the smallest budget streams transformer blocks"
    pipe.use_parallel(parallel)
    video = pipe.generate(demo_image(96), "a dancer", PIPELINE_CONFIG, negative_prompt="blur", run_dir=run_dir)
    streamer = pipe.components.transformer.streamer
    return {
        "latents": None if video is None else video.latents,
        "streamed_bytes": 0 if streamer is None else streamer.stats.transferred_bytes,
    }


# --- the four ranks ---------------------------------------------------------------------------


def four_rank_cases(rank: int, folder: Path) -> None:
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group
    pair = pairs[rank // 2]
    if rank < 2:  # Ulysses on {0, 1} while {2, 3} runs CFG
        with sequence_parallel(model := tiny_model(CASES["ulysses2"].heads), pair):
            _save(folder, "ulysses2", rank, sample(model, CASES["ulysses2"].settings))
        _save(folder, "uneven2", rank, _uneven_batch_parallel(2, pair))
    else:
        _save(folder, "cfg2", rank, sample(tiny_model(2), CASES["cfg2"].settings, CfgParallel(pair)))
        with sequence_parallel(model := tiny_model(CASES["agree2"].heads), pair):
            _save(folder, "agree2", rank, sample(model, CASES["agree2"].settings))

    with sequence_parallel(model := tiny_model(CASES["ulysses4"].heads)):
        _save(folder, "ulysses4", rank, sample(model, CASES["ulysses4"].settings))
    with sequence_parallel(model := streamed(tiny_model(CASES["ulysses4"].heads))):
        result = sample(model, CASES["ulysses4"].settings)
        _save(folder, "streamed4", rank, {**result, "streamed_bytes": model.streamer.stats.transferred_bytes})
    _save(folder, "uneven4", rank, _uneven_batch_parallel(4))
    cfg2x2 = plan("cfg", timeout_s=GROUP_TIMEOUT_S)
    with cfg2x2.applied(model := tiny_model(CASES["cfg2x2"].heads)):
        _save(folder, "cfg2x2", rank, sample(model, CASES["cfg2x2"].settings, cfg2x2.branches))
    _save(folder, "pipeline", rank, pipeline_generate(folder / f"pipeline_{rank}", cfg2x2, streaming=True))

    # Last: rank 3 stops answering (it hangs) in a 2x2 layout whose groups time out after
    # HANG_TIMEOUT_S; the others must give up on it then, long before it wakes up.
    hang = plan("cfg", timeout_s=HANG_TIMEOUT_S)
    dist.barrier()
    (folder / "hang_from.txt").write_text(str(time.time()))
    if rank == 3:
        time.sleep(HANG_S)
        return
    with hang.applied(model := tiny_model(CASES["cfg2x2"].heads)):
        sample(model, CASES["cfg2x2"].settings, hang.branches)
