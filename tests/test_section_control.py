"""SectionControl in the section loop: per-section prompts and keyframes by the section's place
in the video, and the end/start latent strengths, checked on a recording fake transformer."""

from __future__ import annotations

import pytest
import torch

from framepack.config import GenerationConfig
from framepack.errors import ConfigError, InputError
from framepack.sampling.control import SectionControl, SectionText, TextBlend
from framepack.sampling.loop import generate_latents
from tests.sampling_fakes import FakeTransformer, conditioning

H = W = 2


def latent(value: float) -> torch.Tensor:
    return torch.full((1, 16, 1, H, W), value)


def text(value: float, tokens: int) -> SectionText:
    mask = torch.zeros(1, 4, dtype=torch.bool)
    mask[:, :tokens] = True
    embeds = torch.zeros(1, 4, 8)
    embeds[:, :tokens] = value
    return SectionText(embeds, mask, torch.full((1, 6), value))


def per_frame(latents: torch.Tensor) -> list[float]:
    return [round(v, 4) for v in latents.mean(dim=(0, 1, 3, 4)).tolist()]


def config(**kwargs: object) -> GenerationConfig:
    return GenerationConfig(**{"seconds": 4.0, "steps": 2, **kwargs})  # 4 s at window 9 -> 3 sections


@pytest.mark.parametrize("mode", ["inverted", "forward"])
def test_prompts_follow_the_video_order_in_both_modes(mode: str) -> None:
    control = SectionControl(
        texts=(text(1.0, 2), text(2.0, 3), text(3.0, 1)),
        text_of=(TextBlend(0), TextBlend(1), TextBlend(2)),  # video sections 0, 1, 2
    )
    fake = FakeTransformer()
    generate_latents(fake, conditioning(), latent(5.0), config(mode=mode), control=control)
    pooled = [p.conditioning.pooled.mean().item() for p in fake.prepared]
    # the inverted loop generates the video's last section first
    assert pooled == ([3.0, 2.0, 1.0] if mode == "inverted" else [1.0, 2.0, 3.0])
    lengths = [int(p.conditioning.text_mask.sum()) for p in fake.prepared]
    assert lengths == ([1, 3, 2] if mode == "inverted" else [2, 3, 1])


def test_a_blend_interpolates_embeds_and_pooled_over_the_union_of_masks() -> None:
    control = SectionControl(
        texts=(text(1.0, 1), text(3.0, 3)),
        text_of=(TextBlend(0), TextBlend(0, 1, 0.25), TextBlend(1)),
    )
    fake = FakeTransformer()
    generate_latents(fake, conditioning(), latent(5.0), config(mode="forward"), control=control)
    middle = fake.prepared[1].conditioning
    assert middle.text_mask.tolist() == [[True, True, True, False]]
    assert middle.text_embeds[0, :, 0].tolist() == [1.5, 0.75, 0.75, 0.0]  # 0.75·1 + 0.25·3, then 0.25·3
    assert middle.pooled.mean().item() == 1.5
    first = fake.prepared[0].conditioning
    assert first.text_embeds is not middle.text_embeds and first.pooled.mean().item() == 1.0


def test_a_section_without_control_gets_the_conditioning_itself() -> None:
    base = conditioning()
    fake = FakeTransformer()
    generate_latents(fake, base, latent(5.0), config(), control=SectionControl())
    assert all(p.conditioning.text_embeds is base.text_embeds for p in fake.prepared)
    assert all(p.context.clean[:, :, :1].mean().item() == 5.0 for p in fake.prepared)


def test_keyframes_stand_in_the_start_slot_and_their_embeds_replace_the_start_images() -> None:
    control = SectionControl(
        anchors=(latent(8.0),),
        anchor_embeds=(torch.full((1, 3, 5), 4.0),),
        anchor_of=(0, 0, None),  # video sections 0 and 1 see the keyframe, 2 the start image
    )
    fake = FakeTransformer()
    result = generate_latents(fake, conditioning(image=1.0), latent(5.0), config(), control=control)
    slots = [per_frame(p.context.clean)[0] for p in fake.prepared]  # generation order: video 2, 1, 0
    assert slots == [5.0, 8.0, 8.0]
    assert [p.conditioning.image_embeds.mean().item() for p in fake.prepared] == [1.0, 4.0, 4.0]
    assert per_frame(result)[0] == 5.0  # the video still starts on the start latent


def test_keyframe_embeds_mix_with_the_end_image_as_the_start_images_would() -> None:
    control = SectionControl(anchors=(latent(8.0),), anchor_embeds=(torch.full((1, 3, 5), 5.0),), anchor_of=(0, 0, 0))
    fake = FakeTransformer()
    generate_latents(
        fake,
        conditioning(image=1.0),
        latent(5.0),
        config(),
        end_latent=latent(7.0),
        end_image_embeds=torch.full((1, 3, 5), 3.0),
        control=control,
    )
    assert [p.conditioning.image_embeds.mean().item() for p in fake.prepared] == [4.0, 4.0, 4.0]  # 0.5·5 + 0.5·3


def test_end_and_start_strengths_scale_their_slots() -> None:
    fake = FakeTransformer()
    cfg = config(end_strength=0.5, start_strength=0.8)
    result = generate_latents(fake, conditioning(), latent(5.0), cfg, end_latent=latent(7.0))
    assert per_frame(fake.prepared[0].context.clean) == [4.0, 3.5]
    assert per_frame(fake.prepared[1].context.clean)[0] == 4.0
    assert per_frame(result)[0] == 5.0


def test_an_empty_section_control_is_bit_identical_to_none() -> None:
    def run(**kwargs: object) -> torch.Tensor:
        torch.manual_seed(0)
        start, end = torch.randn(1, 16, 1, H, W), torch.randn(1, 16, 1, H, W)
        return generate_latents(FakeTransformer(), conditioning(), start, config(), end_latent=end, **kwargs)

    assert torch.equal(run(), run(control=SectionControl()))


def test_bad_controls_and_strengths() -> None:
    with pytest.raises(InputError, match="one entry per section"):
        generate_latents(
            FakeTransformer(), conditioning(), latent(5.0), config(), control=SectionControl(anchor_of=(None,))
        )
    with pytest.raises(InputError, match="prompt 1 named"):
        control = SectionControl(texts=(text(1.0, 1),), text_of=(TextBlend(0, 1, 0.5),) * 3)
        generate_latents(FakeTransformer(), conditioning(), latent(5.0), config(), control=control)
    with pytest.raises(ConfigError, match="end_strength"):
        config(end_strength=-0.1)
    with pytest.raises(ConfigError, match="start_strength"):
        config(start_strength=float("nan"))
