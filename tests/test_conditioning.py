"""Conditioning and PackedContext refuse malformed tensors with an InputError naming the field."""

from __future__ import annotations

import pytest
import torch

from framepack.conditioning import Conditioning, PackedContext
from framepack.errors import InputError


def good_conditioning(**changes: object) -> Conditioning:
    fields = dict(
        text_embeds=torch.zeros(2, 5, 8),
        text_mask=torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool),
        pooled=torch.zeros(2, 4),
        guidance=torch.full((2,), 10.0),
        image_embeds=torch.zeros(2, 3, 6),
    )
    return Conditioning(**{**fields, **changes})


def test_good_conditioning_moves_floats_only() -> None:
    cond = good_conditioning().to(dtype=torch.float64)
    assert cond.batch_size == 2
    assert cond.text_embeds.dtype == torch.float64 and cond.text_mask.dtype == torch.bool
    assert good_conditioning(image_embeds=None).image_embeds is None


def test_guidance_keeps_float32_when_the_embeddings_go_to_a_low_precision_dtype() -> None:
    # 6.4 is 6.40625 in bfloat16: the loop compares the scale with the config, so it must not be rounded.
    cond = good_conditioning(guidance=torch.full((2,), 6.4)).to("cpu", torch.bfloat16)
    assert cond.text_embeds.dtype == cond.pooled.dtype == cond.image_embeds.dtype == torch.bfloat16
    assert cond.guidance.dtype == torch.float32
    assert cond.guidance.tolist() == [torch.tensor(6.4).item()] * 2


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"text_embeds": torch.zeros(2, 5)}, r"text_embeds: expected shape \[B, L, D\], got \[2, 5\]"),
        ({"text_embeds": torch.zeros(2, 5, 8, dtype=torch.int64)}, "text_embeds: expected a floating-point"),
        ({"text_embeds": [[0.0]]}, "text_embeds: expected a tensor"),
        ({"text_mask": torch.ones(2, 5)}, "text_mask: expected dtype torch.bool"),
        ({"text_mask": torch.ones(2, 4, dtype=torch.bool)}, r"text_mask: expected shape \[2, 5\]"),
        (
            {"text_mask": torch.tensor([[1, 0, 1, 0, 0], [1] * 5], dtype=torch.bool)},
            "text_mask: valid tokens must form a prefix",
        ),
        ({"pooled": torch.zeros(3, 4)}, r"pooled: expected batch 2"),
        ({"pooled": torch.zeros(2, 4, dtype=torch.int32)}, "pooled: expected a floating-point"),
        ({"guidance": torch.full((2, 1), 10.0)}, r"guidance: expected shape \[B\]"),
        ({"guidance": torch.full((1,), 10.0)}, "guidance: expected batch 2"),
        ({"guidance": torch.full((2,), 10)}, "guidance: expected a floating-point"),
        ({"image_embeds": torch.zeros(2, 6)}, r"image_embeds: expected shape \[B, N, E\]"),
        ({"image_embeds": torch.zeros(1, 3, 6)}, "image_embeds: expected batch 2"),
    ],
)
def test_bad_conditioning_names_the_field(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        good_conditioning(**changes)


def context(**changes: object) -> PackedContext:
    fields = dict(
        latent_indices=torch.arange(4, 7)[None],
        clean=torch.zeros(2, 16, 2, 8, 10),
        clean_indices=torch.tensor([[0, 7]]),
        clean_2x=torch.zeros(2, 16, 2, 8, 10),
        clean_2x_indices=torch.tensor([[8, 9]]),
        clean_4x=torch.zeros(2, 16, 16, 8, 10),
        clean_4x_indices=torch.arange(10, 26)[None],
    )
    return PackedContext(**{**fields, **changes})


def test_good_context_lists_groups_in_order() -> None:
    assert [name for name, _, _ in context().groups] == ["clean", "clean_2x", "clean_4x"]
    assert [name for name, _, _ in context(clean_2x=None, clean_2x_indices=None).groups] == ["clean", "clean_4x"]
    context().check_against(torch.zeros(2, 16, 3, 8, 10))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"latent_indices": torch.arange(3)}, r"latent_indices: expected shape \[B, T\] int64"),
        ({"latent_indices": torch.arange(3, dtype=torch.int32)[None]}, "latent_indices: expected dtype torch.int64"),
        ({"clean_indices": None}, "clean is given but clean_indices is not"),
        ({"clean_2x": None}, "clean_2x_indices is given but clean_2x is not"),
        ({"clean": torch.zeros(2, 16, 8, 10)}, r"clean: expected shape \[B, C, t, H, W\]"),
        ({"clean_4x": torch.zeros(2, 16, 16, 8, 10, dtype=torch.int64)}, "clean_4x: expected a floating-point"),
        ({"clean_2x_indices": torch.tensor([[8, 9, 10]])}, r"clean_2x_indices: expected 2 indices"),
        ({"clean_indices": torch.tensor([[0, 7]] * 3)}, r"clean_indices: expected batch 1 or 2"),
        ({"clean_2x": torch.zeros(1, 16, 2, 8, 10)}, "clean groups have different batch sizes"),
    ],
)
def test_bad_context_names_the_field(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        context(**changes)


@pytest.mark.parametrize(
    "latents, message",
    [
        (torch.zeros(2, 16, 4, 8, 10), r"latent_indices: expected 4 indices"),
        (torch.zeros(2, 16, 3, 8, 12), r"clean: expected \[2, 16, t, 8, 12\]"),
        (torch.zeros(3, 16, 3, 8, 10), r"clean: expected \[3, 16"),
    ],
)
def test_context_must_fit_the_latents(latents: torch.Tensor, message: str) -> None:
    with pytest.raises(InputError, match=message):
        context().check_against(latents)


def test_latent_indices_batch_must_fit() -> None:
    with pytest.raises(InputError, match=r"latent_indices: expected batch 1 or 2"):
        context(latent_indices=torch.arange(3).expand(3, 3).contiguous()).check_against(torch.zeros(2, 16, 3, 8, 10))
