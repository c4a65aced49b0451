"""One budget places every component: a tight one streams and swaps, with the same latents."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cli import demo_image
from framepack.components import Components, tiny_components
from framepack.errors import ConfigError
from framepack.models.transformer import FramePackTransformer
from framepack.units import GIB

CONFIG = GenerationConfig(window=3, steps=3, resolution=64, seconds=0.8)


def smallest_budget_gb(pipe: FramePackPipeline, resolution: int = CONFIG.resolution) -> float:
    """The smallest budget (to 2 %) the planner accepts for the tiny pipeline."""
    budget = 1 << 20
    while True:
        try:
            pipe.set_vram_budget(budget / GIB, resolution=resolution, window=CONFIG.window)
            return budget / GIB
        except ConfigError:
            budget = int(budget * 1.02)


def wide_components() -> Components:
    """The tiny pipeline with a transformer wide enough (~35 MB of blocks) that sampling,
    not the tiny Llama's 16 MB embedding table, decides how the budget is spent."""
    components = tiny_components(seed=0)
    config = dataclasses.replace(components.transformer.config, num_attention_heads=8, attention_head_dim=32,
                                 rope_axes_dim=(8, 12, 12))  # fmt: skip
    torch.manual_seed(0)
    return dataclasses.replace(components, transformer=FramePackTransformer(config).eval().requires_grad_(False))


def test_a_budget_that_forces_streaming_gives_the_same_latents(tmp_path: Path) -> None:
    image = demo_image(96)
    components = wide_components()
    reference = FramePackPipeline(copy.deepcopy(components)).generate(image, "a dancer", CONFIG, run_dir=tmp_path / "a")

    pipe = FramePackPipeline(components)
    plan = pipe.set_vram_budget(smallest_budget_gb(pipe), resolution=CONFIG.resolution, window=CONFIG.window)
    assert plan.swap_components
    assert plan.streaming["transformer"].streamed, "the smallest budget must stream transformer blocks"
    assert pipe.components.transformer.streamer is not None
    streamed = pipe.generate(image, "a dancer", CONFIG, run_dir=tmp_path / "b")
    assert torch.equal(streamed.latents, reference.latents)
    assert pipe.components.transformer.streamer.stats.transferred_bytes > 0
    assert "transformer streamer" in pipe.memory_report()


def test_a_run_larger_than_the_plan_was_made_for_is_planned_again(tmp_path: Path) -> None:
    """A queue's later job at a higher resolution: the budget's plan for 64 px keeps every
    component resident, beside which a 128 px decode would not fit; the run plans again first."""
    image, components = demo_image(128), wide_components()
    larger = dataclasses.replace(CONFIG, resolution=128)
    reference = FramePackPipeline(copy.deepcopy(components)).generate(image, "a dancer", larger, run_dir=tmp_path / "a")
    budget = smallest_budget_gb(FramePackPipeline(copy.deepcopy(components)), 128)
    for_128 = FramePackPipeline(copy.deepcopy(components)).set_vram_budget(budget, resolution=128, window=CONFIG.window)

    pipe = FramePackPipeline(components)
    assert not pipe.set_vram_budget(budget, resolution=64, window=CONFIG.window).swap_components
    assert for_128.swap_components
    result = pipe.generate(image, "a dancer", larger, run_dir=tmp_path / "b")
    assert torch.equal(result.latents, reference.latents)
    assert pipe.memory_report().startswith(str(for_128))
    pipe.generate(image, "a dancer", CONFIG, run_dir=tmp_path / "c")  # a smaller run keeps the larger plan
    assert pipe.memory_report().startswith(str(for_128))


def test_too_small_a_budget_says_which_phase_and_how_much(tmp_path: Path) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    with pytest.raises(ConfigError, match=r"too small for the \w+ phase: it needs at least"):
        pipe.set_vram_budget(1e-6)


def test_no_budget_keeps_everything_resident() -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    plan = pipe.set_vram_budget(None)
    assert not plan.swap_components and not plan.vae_tiling
    assert pipe.components.transformer.streamer is None


def test_vae_tiling_follows_the_config_else_the_memory_plan() -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    assert pipe._tiling(GenerationConfig(vae_tiling=True)) is not None
    assert pipe._tiling(GenerationConfig()) is None  # no plan: the reference's default path
    plan = pipe.set_vram_budget(smallest_budget_gb(pipe, 640), resolution=640, window=CONFIG.window)
    assert plan.vae_tiling, "a tight budget at 640 px must tile the VAE"
    assert pipe._tiling(GenerationConfig()) is not None
    assert pipe._tiling(GenerationConfig(vae_tiling=False)) is None


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), float("inf"), True, "6"])
def test_an_impossible_vram_budget_is_refused_by_the_api(budget: object) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    with pytest.raises(ConfigError, match=r"vram_budget_gb: expected a finite number of GiB > 0, or None; got"):
        pipe.set_vram_budget(budget)  # type: ignore[arg-type]
