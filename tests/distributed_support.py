"""Spawned gloo process groups for the distributed tests: each rank writes what it computed
(or the error it raised) to a folder the test reads."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from framepack.conditioning import Conditioning
from framepack.config import GenerationConfig
from framepack.distributed.launch import join, plan
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.loop import stream_latents
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_

Worker = Callable[[int, Path], None]


def spawn(worker: Worker, world: int, folder: Path, *, timeout_s: float = 60.0) -> list[int | None]:
    """Run ``worker(rank, folder)`` on ``world`` gloo ranks; the exit code of each (None: still running)."""
    context = mp.start_processes(
        _entry, args=(world, str(folder), worker), nprocs=world, join=False, start_method="spawn"
    )
    for process in context.processes:
        process.join(timeout_s)
    codes = [process.exitcode for process in context.processes]
    for process in context.processes:  # a hung rank must not outlive the test
        if process.exitcode is None:
            process.kill()
    return codes


def _entry(rank: int, world: int, folder: str, worker: Worker) -> None:
    torch.set_num_threads(1)
    try:
        join("gloo", timeout_s=20, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
        worker(rank, Path(folder))
        dist.destroy_process_group()
    except BaseException:
        (Path(folder) / f"error_{rank}.txt").write_text(traceback.format_exc())
        raise


def tiny_model(heads: int = 2) -> FramePackTransformer:
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


def sample(model: FramePackTransformer, parallel: Any = None, **settings: Any) -> dict[str, Any]:
    """Two sections of a 10x14 latent video (odd token counts); latents and cache statistics."""
    config = GenerationConfig(seconds=2.0, window=3, steps=4, seed=7, **settings)
    start = torch.randn(1, 16, 1, 10, 14, generator=torch.Generator().manual_seed(5))
    negative = prompt(2, 3, config.distilled_cfg) if config.real_cfg != 1.0 else None
    results = list(
        stream_latents(
            model,
            prompt(1, 5, config.distilled_cfg),
            start,
            config,
            negative=negative,
            branches=None if parallel is None else parallel.branches,
        )
    )
    return {
        "latents": results[-1].history,
        "skipped": sum(r.cache_stats.skipped_count for r in results if r.cache_stats is not None),
    }


def sampling_worker(mode: str, heads: int = 2, **settings: Any) -> Worker:
    """Each rank samples once in one process (the unchanged path) and once in parallel."""
    return functools.partial(_sampling, mode, heads, settings)


def _sampling(mode: str, heads: int, settings: dict[str, Any], rank: int, folder: Path) -> None:
    model = tiny_model(heads)
    reference = sample(model, **settings)
    parallel = plan(mode)
    with parallel.applied(model):
        result = sample(model, parallel, **settings)
    torch.save({"reference": reference, "parallel": result}, folder / f"rank_{rank}.pt")


def uneven_batch_worker(rank: int, folder: Path) -> None:
    """A batch of two prompts of different lengths straight through the transformer."""
    model = tiny_model()
    inputs = make_inputs(2, [5, 9], seed=2)
    conditioning, context = conditioning_and_context(inputs)
    prepared = model.prepare(conditioning, context, inputs["latents"].shape)
    reference = model.denoise(inputs["latents"], inputs["timestep"], prepared)
    with plan("ulysses").applied(model):
        result = model.denoise(inputs["latents"], inputs["timestep"], prepared)
    torch.save({"reference": reference, "parallel": result}, folder / f"rank_{rank}.pt")


def failing_worker(rank: int, folder: Path) -> None:
    """Rank 1 fails in its first transformer call; rank 0 is then waiting in an all-to-all."""
    model = tiny_model()
    parallel = plan("ulysses")
    if rank == 1:
        model.double_blocks[0].image_qkv.forward_into = _broken
    with parallel.applied(model):
        sample(model, parallel)


def _broken(*_: Any) -> None:
    raise RuntimeError("rank 1 broke on purpose")


def pipeline_worker(rank: int, folder: Path) -> None:
    """The API: every rank calls generate; rank 0 gets the video and writes, rank 1 writes nothing."""
    from framepack import FramePackPipeline
    from framepack.cli import demo_image

    pipe = FramePackPipeline.tiny()
    config = GenerationConfig(window=3, steps=3, resolution=64, seconds=0.8, real_cfg=2.0, distilled_cfg=1.0)
    image = demo_image(96)
    alone = pipe.generate(image, "a dancer", config, negative_prompt="blur", run_dir=folder / f"alone_{rank}")
    pipe.use_parallel(plan("cfg"))
    together = pipe.generate(image, "a dancer", config, negative_prompt="blur", run_dir=folder / f"together_{rank}")
    torch.save(
        {"alone": alone.latents, "together": None if together is None else together.latents},
        folder / f"rank_{rank}.pt",
    )
