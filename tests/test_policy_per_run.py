"""One config given to several runs: each run builds its own cache policy, so runs share no state."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cache import CachePolicy, MagCache, TeaCache, calibrate
from framepack.cli import demo_image
from framepack.pipeline import EncodedInputs
from framepack.sampling.loop import Progress, generate_latents, stream_latents

# window 3 at 30 fps: 12 pixel frames a section, so 0.8 s is two sections; 64 px keeps it fast.
CONFIG = GenerationConfig(window=3, steps=3, resolution=64, seconds=0.8, cache=TeaCache(1.0))


@pytest.fixture(scope="module")
def pipe() -> FramePackPipeline:
    return FramePackPipeline.tiny(seed=0)


@pytest.fixture(scope="module")
def inputs(pipe: FramePackPipeline) -> EncodedInputs:
    return pipe.encode(demo_image(64), "a dancer", CONFIG)


def test_two_threads_sharing_a_policy_get_the_videos_of_two_separate_runs(
    pipe: FramePackPipeline, inputs: EncodedInputs
) -> None:
    transformer = pipe.components.transformer
    shared = CONFIG.cache
    expected, skipped = [], 0
    for seed in (1, 2):  # one after the other, each with a policy of its own
        config = replace(CONFIG, cache=TeaCache(1.0))
        sections = list(
            stream_latents(
                transformer,
                inputs.conditioning,
                inputs.start_latent,
                config,
                generator=torch.Generator().manual_seed(seed),
            )
        )
        expected.append(sections[-1].history)
        skipped += sum(s.cache_stats.skipped_count for s in sections)
    assert skipped > 0  # the policy reuses residuals: its state matters

    barrier = threading.Barrier(2, timeout=60)  # the two runs step in lockstep: every call interleaves

    def in_step(progress: Progress) -> None:
        barrier.wait()

    got: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            got[seed] = generate_latents(
                transformer,
                inputs.conditioning,
                inputs.start_latent,
                CONFIG,
                callback=in_step,
                generator=torch.Generator().manual_seed(seed),
            )
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert torch.equal(got[1], expected[0]) and torch.equal(got[2], expected[1])
    assert shared.stats == []  # the config's policy is a template: never run, it collects nothing


@pytest.mark.parametrize("cache", [MagCache(), MagCache, "magcache"], ids=["template", "factory", "spec"])
def test_two_runs_of_one_config_give_one_video_and_each_its_own_statistics(
    pipe: FramePackPipeline, inputs: EncodedInputs, cache: object
) -> None:
    config = replace(CONFIG, cache=cache)
    sections = list(stream_latents(pipe.components.transformer, inputs.conditioning, inputs.start_latent, config))
    again = list(stream_latents(pipe.components.transformer, inputs.conditioning, inputs.start_latent, config))
    assert len(sections) == 2 and torch.equal(again[-1].history, sections[-1].history)
    assert [s.cache_stats for s in again] == [s.cache_stats for s in sections]  # equal, not shared
    assert all(a.cache_stats is not b.cache_stats for a, b in zip(again, sections))
    assert sections[0].cache_stats.skipped_count > 0


def test_the_pipeline_reports_each_sections_cache_statistics(pipe: FramePackPipeline, tmp_path) -> None:
    run = pipe.stream(demo_image(64), "a dancer", CONFIG, run_dir=tmp_path / "run")
    stats = [section.cache_stats for section in run]
    assert len(stats) == 2 and all(s is not None and s.num_steps == CONFIG.steps for s in stats)
    assert CONFIG.cache.stats == []


def test_calibrate_through_the_section_loop_returns_the_runs_table(
    pipe: FramePackPipeline, inputs: EncodedInputs
) -> None:
    def generate(cache: Callable[[], CachePolicy]) -> torch.Tensor:
        config = replace(CONFIG, cache=cache)
        return generate_latents(pipe.components.transformer, inputs.conditioning, inputs.start_latent, config)

    table = calibrate(generate)
    assert len(table) == CONFIG.steps and table[0] == 1.0 and all(r > 0 for r in table)


def test_calibrate_through_the_pipeline_returns_the_runs_table(pipe: FramePackPipeline, tmp_path) -> None:
    # the pipeline builds a policy to describe the run (its fingerprint) before the run's own
    table = calibrate(
        lambda cache: pipe.generate(demo_image(64), "a dancer", replace(CONFIG, cache=cache), run_dir=tmp_path / "run")
    )
    assert len(table) == CONFIG.steps and table[0] == 1.0 and all(r > 0 for r in table)
