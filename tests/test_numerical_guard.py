"""Silent wrong results: non-finite latents and a cache policy's wrong token count are refused.

Every section's latents are checked after every sampler step; inf or NaN raises
NumericalError naming the section and the first bad step, with the finished sections kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cache import POSITIVE, BlockStack, CachePolicy, CacheStep
from framepack.cli import demo_image
from framepack.errors import InputError, NumericalError
from framepack.runstate import load_run_state
from framepack.sampling.loop import generate_latents, stream_latents

# window 3 at 30 fps: 12 pixel frames a section, so 0.8 s is two sections and 1.2 s three.
FAST = dict(window=3, steps=2, resolution=64, seconds=0.8)
IMAGE = demo_image(64)


def latents_of(pipe: FramePackPipeline, config: GenerationConfig, **options: Any) -> torch.Tensor:
    inputs = pipe.encode(IMAGE, "a dancer", config)
    return generate_latents(
        pipe.components.transformer,
        inputs.conditioning,
        inputs.start_latent,
        config,
        negative=inputs.negative,
        **options,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_a_huge_distilled_guidance_is_refused_in_every_dtype(dtype: torch.dtype) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    pipe.components.transformer.to(dtype)
    # 1000 x 1e38 overflows the guidance embedding's input: its sinusoid is NaN from the first step.
    with pytest.raises(NumericalError, match=r"^section 1/2(:|, sampler step 1/2:)") as caught:
        latents_of(pipe, GenerationConfig(distilled_cfg=1e38, **FAST))
    assert caught.value.partial is None  # no section had finished


def test_a_huge_real_cfg_is_refused() -> None:
    with pytest.raises(
        NumericalError, match=r"^section 1/2: expected finite latents, but sampler step 2/2 "
    ):  # step 1 is huge, step 2 overflows
        latents_of(FramePackPipeline.tiny(seed=0), GenerationConfig(real_cfg=1e38, **FAST))


class NaNResidualAfterFirstSection(CachePolicy):
    """Skips every odd call; from the second section on, the residual it stores (and reuses) is NaN."""

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        return step.step % 2 == 0

    def on_computed(self, step: CacheStep, residual: torch.Tensor, state: dict[str, Any]) -> None:
        if len(self.stats) > 1:
            residual.fill_(float("nan"))


def test_a_policy_returning_nan_names_the_section_and_step_and_keeps_the_first() -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    config = GenerationConfig(cache=NaNResidualAfterFirstSection, **FAST)
    inputs = pipe.encode(IMAGE, "a dancer", config)
    stream = stream_latents(pipe.components.transformer, inputs.conditioning, inputs.start_latent, config)
    first = next(stream)
    assert torch.isfinite(first.history).all()
    with pytest.raises(NumericalError, match=r"^section 2/2: expected finite latents, but sampler step 2/2 ") as caught:
        next(stream)  # step 1 computed, step 2 reused the NaN residual
    assert "1 finished section(s) kept in .partial" in str(caught.value)
    assert torch.equal(caught.value.partial, first.history)
    assert first.cache_stats is not None and first.cache_stats.skipped == {POSITIVE: [1]}


def read_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_nan_weight_mid_run_keeps_the_finished_section_saved_and_resumable(tmp_path: Path) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    config = GenerationConfig(**FAST)
    weight = pipe.components.transformer.proj_out.weight
    kept = weight[0, 0].item()
    sections = iter(pipe.stream(IMAGE, "a dancer", config, run_dir=tmp_path / "cut"))
    assert next(sections).index == 0
    weight[0, 0] = float("nan")  # a corrupted weight, between two sections
    with pytest.raises(NumericalError, match=r"^section 2/2: expected finite latents, but sampler step 1/2 ") as caught:
        next(sections)
    weight[0, 0] = kept
    assert caught.value.partial is not None and torch.isfinite(caught.value.partial).all()
    saved = load_run_state(tmp_path / "cut")
    assert saved is not None and saved.sections_done == 1  # the bad section saved nothing
    assert torch.equal(saved.tensors["history"], caught.value.partial)
    assert read_frames(tmp_path / "cut" / "preview.mp4") == int(saved.tensors["frame_count"]) > 0
    assert not (tmp_path / "cut" / "video.mp4").exists()

    resumed = pipe.generate(IMAGE, "a dancer", config, resume=tmp_path / "cut")  # the weight restored
    assert resumed.num_frames == 4 * (2 * 3 + 1) - 3 and torch.isfinite(resumed.latents).all()


class DropsAToken(CachePolicy):
    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        return True

    def run(self, stack: BlockStack) -> torch.Tensor:
        return super().run(stack)[:, 1:]


class AddsAToken(DropsAToken):
    def run(self, stack: BlockStack) -> torch.Tensor:
        out = super(DropsAToken, self).run(stack)
        return torch.cat([out[:, :1], out], dim=1)


@pytest.mark.parametrize("policy, delta", [(DropsAToken(), -1), (AddsAToken(), 1)], ids=["fewer", "more"])
def test_a_policy_returning_another_token_count_is_refused(policy: CachePolicy, delta: int) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    with pytest.raises(InputError) as caught:
        latents_of(pipe, GenerationConfig(cache=policy, **FAST))
    message = str(caught.value)
    expected = [int(n) for n in message.split("of shape [")[1].split("]")[0].split(", ")]
    got = [int(n) for n in message.split("got shape [")[1].split("]")[0].split(", ")]
    assert message.startswith(f"cache policy {type(policy).__name__}.run: expected the image stream of shape ")
    assert got == [expected[0], expected[1] + delta, expected[2]]
