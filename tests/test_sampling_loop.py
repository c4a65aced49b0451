from __future__ import annotations

import pytest
import torch

from framepack.cache.base import NEGATIVE, NoCache, PolicyBranch
from framepack.conditioning import Conditioning
from framepack.config import GenerationConfig
from framepack.errors import ConfigError, GenerationCancelled, GenerationInterrupted, InputError
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.loop import Progress, generate_latents, stream_latents
from tests.sampling_fakes import FakeTransformer, Prepared, conditioning

H = W = 2
START = 5.0


def start_latent(value: float = START) -> torch.Tensor:
    return torch.full((1, 16, 1, H, W), value)


def per_frame(latents: torch.Tensor) -> list[float]:
    """One value per frame (the fakes produce frame-constant latents)."""
    return [round(v, 4) for v in latents.mean(dim=(0, 1, 3, 4)).tolist()]


def config(**kwargs: object) -> GenerationConfig:
    return GenerationConfig(**{"seconds": 3.0, "steps": 3, **kwargs})  # 3 s -> 2 sections


def test_inverted_end_to_end_constant_sections() -> None:
    fake = FakeTransformer()  # section k (generation order) predicts x0 = k + 1 everywhere
    video = generate_latents(fake, conditioning(), start_latent(), config())
    assert video.shape == (1, 16, 2 * 9 + 1, H, W)
    assert per_frame(video) == [5.0] + [2.0] * 9 + [1.0] * 9  # generated from the end back to the start
    second = fake.prepared[1].context
    assert per_frame(second.clean) == [5.0, 1.0]
    assert per_frame(second.clean_2x) == [1.0, 1.0]
    assert per_frame(second.clean_4x) == [1.0] * 6 + [0.0] * 10
    assert second.latent_indices.tolist() == [list(range(1, 10))]
    assert fake.prepared[0].context.clean_indices.tolist() == [[0, 19]]
    assert fake.prepared[0].latents_shape == (1, 16, 9, H, W)


def test_forward_end_to_end_constant_sections() -> None:
    fake = FakeTransformer()
    video = generate_latents(fake, conditioning(), start_latent(), config(mode="forward", seconds=5.0))
    assert video.shape == (1, 16, 4 * 9 + 1, H, W)
    assert per_frame(video) == [5.0] + [1.0] * 9 + [2.0] * 9 + [3.0] * 9 + [4.0] * 9
    second = fake.prepared[1].context
    assert per_frame(second.clean) == [5.0, 1.0]
    assert per_frame(second.clean_4x) == [0.0] * 9 + [5.0] + [1.0] * 6


def test_stream_yields_each_section_in_temporal_order() -> None:
    results = list(stream_latents(FakeTransformer(), conditioning(), start_latent(), config()))
    assert [r.index for r in results] == [0, 1] and [r.is_last for r in results] == [False, True]
    assert per_frame(results[0].latents) == [1.0] * 9 and per_frame(results[0].history) == [1.0] * 9
    assert per_frame(results[1].latents) == [5.0] + [2.0] * 9  # the start latent joins the last section
    assert results[1].history.shape[2] == 19 and results[1].seconds >= 0


def test_noise_is_one_cpu_stream_in_section_order() -> None:
    fake = FakeTransformer()
    generate_latents(fake, conditioning(), start_latent(), config(seed=1234))
    first_calls = [c.latents for c in fake.calls if c.timestep.item() == 1000.0]  # sigma 1: the noise itself
    g = torch.Generator("cpu").manual_seed(1234)
    expected = [torch.randn((1, 16, 9, H, W), generator=g) for _ in range(2)]
    assert len(first_calls) == 2
    assert all(torch.equal(a, b) for a, b in zip(first_calls, expected))


def nonlinear_velocity(latents: torch.Tensor, timestep: torch.Tensor, prepared: Prepared, branch: str) -> torch.Tensor:
    context = prepared.context.clean.mean() + prepared.context.clean_4x.mean()
    return torch.tanh(latents) * 0.7 - 0.2 * context + prepared.conditioning.image_embeds.mean()


def test_same_seed_same_video_other_seed_other_video() -> None:
    def run(seed: int) -> torch.Tensor:
        return generate_latents(FakeTransformer(nonlinear_velocity), conditioning(), start_latent(), config(seed=seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_cancel_after_one_section_keeps_it() -> None:
    kept = []

    def cancel_in_second(progress: Progress) -> None:
        if progress.section == 1:
            raise GenerationCancelled()

    stream = stream_latents(FakeTransformer(), conditioning(), start_latent(), config(), callback=cancel_in_second)
    with pytest.raises(GenerationCancelled) as caught:
        for result in stream:
            kept.append(result)
    assert len(kept) == 1 and per_frame(kept[0].latents) == [1.0] * 9
    assert per_frame(caught.value.partial) == [1.0] * 9

    with pytest.raises(GenerationCancelled) as caught:
        generate_latents(FakeTransformer(), conditioning(), start_latent(), config(), callback=cancel_in_second)
    assert per_frame(caught.value.partial) == [1.0] * 9


def test_failure_keeps_finished_sections() -> None:
    with pytest.raises(GenerationInterrupted) as caught:
        generate_latents(FakeTransformer(fail_in_section=1), conditioning(), start_latent(), config())
    assert per_frame(caught.value.partial) == [1.0] * 9
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError):  # nothing finished: the original error, untouched
        generate_latents(FakeTransformer(fail_in_section=0), conditioning(), start_latent(), config())


def test_progress_counts_every_step() -> None:
    seen: list[Progress] = []
    generate_latents(FakeTransformer(), conditioning(), start_latent(), config(steps=4), callback=seen.append)
    assert [(p.section, p.step) for p in seen] == [(s, i) for s in range(2) for i in range(4)]
    assert all(p.num_sections == 2 and p.num_steps == 4 for p in seen)
    assert seen[-1].eta == 0.0 and seen[-1].fraction == 1.0 and all(p.eta >= 0 for p in seen)


def test_end_latent_and_embedding_blend() -> None:
    fake = FakeTransformer()
    end_embeds = torch.full((1, 3, 5), 3.0)
    end = start_latent(7.0)
    generate_latents(
        fake, conditioning(image=1.0), start_latent(), config(), end_latent=end, end_image_embeds=end_embeds
    )
    assert per_frame(fake.prepared[0].context.clean) == [5.0, 7.0]  # end latent in the 1x slot, first section only
    assert per_frame(fake.prepared[1].context.clean) == [5.0, 1.0]
    # default weighted_average with start strength 0.5: 0.5·1 + 0.5·3
    assert [p.conditioning.image_embeds.mean().item() for p in fake.prepared] == [2.0, 2.0]

    fake = FakeTransformer()
    cfg = config(end_embed_mode="linear")
    generate_latents(fake, conditioning(image=1.0), start_latent(), cfg, end_latent=end, end_image_embeds=end_embeds)
    # video end (generated first) gets the start embeds, video start gets the end embeds
    assert [p.conditioning.image_embeds.mean().item() for p in fake.prepared] == [1.0, 3.0]

    fake = FakeTransformer()
    generate_latents(fake, conditioning(image=1.0), start_latent(), config(), end_latent=end)
    assert [p.conditioning.image_embeds.mean().item() for p in fake.prepared] == [1.0, 1.0]  # no end embeds: unchanged


def test_real_cfg_uses_negative_text_with_positive_image_and_cache_restarts() -> None:
    fake = FakeTransformer()
    template = NoCache()
    negative = conditioning(text=-1.0, image=None)
    sections = list(
        stream_latents(fake, conditioning(), start_latent(), config(real_cfg=2.0, cache=template), negative=negative)
    )
    branches = [c.branch for c in fake.calls]
    assert branches == ["positive", "negative"] * 6  # 2 sections x 3 steps
    neg_prepared = [p for p in fake.prepared if p.conditioning.pooled.mean() == -1.0]
    assert len(neg_prepared) == 2
    assert all(p.conditioning.image_embeds.mean() == 1.0 for p in neg_prepared)
    run_policy = fake.calls[0].cache  # the run's own copy of the template, for every positive call
    assert isinstance(run_policy, NoCache) and run_policy is not template
    assert all(c.cache is run_policy for c in fake.calls[::2])
    # the negative calls get the same policy's negative branch: the transformer never sees a branch name
    assert all(
        isinstance(c.cache, PolicyBranch) and (c.cache.policy, c.cache.name) == (run_policy, NEGATIVE)
        for c in fake.calls[1::2]
    )
    assert [s.cache_stats.num_steps for s in sections] == [3, 3]
    assert template.stats == []  # a template is never run and collects nothing


def test_text_to_video_from_zero_start() -> None:
    video = generate_latents(FakeTransformer(), conditioning(image=None), start_latent(0.0), config(mode="forward"))
    assert per_frame(video) == [0.0] + [1.0] * 9 + [2.0] * 9


def test_bad_inputs() -> None:
    fake = FakeTransformer()
    with pytest.raises(ConfigError, match="distilled_cfg"):
        generate_latents(fake, conditioning(guidance=6.0), start_latent(), config())
    with pytest.raises(ConfigError, match="negative"):
        generate_latents(fake, conditioning(), start_latent(), config(real_cfg=3.0))
    with pytest.raises(InputError, match="start_latent"):
        generate_latents(fake, conditioning(), torch.zeros(1, 4, 1, H, W), config())
    with pytest.raises(ConfigError, match="inverted"):
        generate_latents(fake, conditioning(), start_latent(), config(mode="forward"), end_latent=start_latent())
    with pytest.raises(InputError, match="end_latent"):
        generate_latents(fake, conditioning(), start_latent(), config(), end_latent=torch.zeros(1, 16, 1, 3, 3))
    with pytest.raises(InputError, match="end_image_embeds"):
        generate_latents(fake, conditioning(), start_latent(), config(), end_image_embeds=torch.zeros(1, 3, 5))
    assert fake.calls == []


def test_explicit_generator_is_used() -> None:
    a = generate_latents(
        FakeTransformer(nonlinear_velocity),
        conditioning(),
        start_latent(),
        config(seed=1),
        generator=torch.Generator().manual_seed(99),
    )
    b = generate_latents(FakeTransformer(nonlinear_velocity), conditioning(), start_latent(), config(seed=99))
    assert torch.equal(a, b)


def test_bfloat16_transformer_takes_a_guidance_scale_bfloat16_cannot_hold() -> None:
    torch.manual_seed(0)
    model = FramePackTransformer(TransformerConfig.preset("tiny")).eval().requires_grad_(False).to(torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    cond = Conditioning(
        text_embeds=torch.randn(1, 4, 32, generator=g),
        text_mask=torch.tensor([[True, True, True, False]]),
        pooled=torch.randn(1, 16, generator=g),
        guidance=torch.full((1,), 6.4),
        image_embeds=torch.randn(1, 3, 24, generator=g),
    ).to("cpu", model.dtype)  # as the pipeline hands it over
    guidance_seen = []
    prepare = model.prepare
    model.prepare = lambda c, *args: (guidance_seen.append(c.guidance), prepare(c, *args))[1]  # type: ignore[method-assign]
    video = generate_latents(model, cond, start_latent(0.5), config(seconds=0.3, steps=2, window=2, distilled_cfg=6.4))
    assert video.shape == (1, 16, 3, H, W) and torch.isfinite(video).all()
    assert [(v.dtype, v.tolist()) for v in guidance_seen] == [(torch.float32, [torch.tensor(6.4).item()])]
