"""FramePackTransformer against diffusers' HunyuanVideoFramepackTransformer3DModel and an
independent transcription of FramePack's hunyuan_video_packed.py, on a tiny random checkpoint loaded through
our from_pretrained from diffusers' own sharded save_pretrained output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framepack.models.transformer import FramePackTransformer
from tests.transformer_support import (
    TINY,
    build_diffusers_model,
    conditioning_and_context,
    make_inputs,
    reference_forward,
    select,
    tolerance,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = tmp_path_factory.mktemp("tiny_transformer")
    reference = build_diffusers_model(folder)
    ours = FramePackTransformer.from_pretrained(folder)
    state = {k: v.detach() for k, v in reference.state_dict().items()}
    return reference, ours, state, folder


def run_diffusers(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(
            hidden_states=inputs["latents"],
            timestep=inputs["timestep"],
            encoder_hidden_states=inputs["text"],
            encoder_attention_mask=inputs["text_mask"],
            pooled_projections=inputs["pooled"],
            image_embeds=inputs["image"],
            indices_latents=inputs["latent_indices"][0],
            guidance=1000 * inputs["guidance"],  # diffusers embeds the raw value it is given
            latents_clean=inputs["clean"],
            indices_latents_clean=inputs["clean_indices"][0],
            latents_history_2x=inputs["clean_2x"],
            indices_latents_history_2x=inputs["clean_2x_indices"][0],
            latents_history_4x=inputs["clean_4x"],
            indices_latents_history_4x=inputs["clean_4x_indices"][0],
            return_dict=False,
        )[0]


def run_ours(model: FramePackTransformer, inputs: dict, **flags: bool) -> torch.Tensor:
    cond, context = conditioning_and_context(inputs, **flags)
    return model(inputs["latents"], inputs["timestep"], cond, context)


def test_checkpoint_is_sharded_with_index(models: tuple) -> None:
    folder: Path = models[3]
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) > 1


@pytest.mark.parametrize("layout", ["inverted", "f1"])
@pytest.mark.parametrize("size", [(10, 14), (16, 16)])
def test_batch1_matches_diffusers_and_transcription(models: tuple, layout: str, size: tuple[int, int]) -> None:
    reference, ours, state, _ = models
    inputs = make_inputs(1, [5], layout=layout, height=size[0], width=size[1])
    expected = run_diffusers(reference, inputs)
    got = run_ours(ours, inputs)
    assert got.shape == expected.shape == inputs["latents"].shape
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= tolerance(expected)
    transcribed = reference_forward(state, TINY, inputs)
    assert (transcribed - expected).abs().max().item() <= tolerance(expected)


def test_batch2_uneven_text_matches_diffusers_and_batch1(models: tuple) -> None:
    reference, ours, _, _ = models
    inputs = make_inputs(2, [9, 3], seed=4)
    assert inputs["timestep"][0] != inputs["timestep"][1]
    expected = run_diffusers(reference, inputs)
    got = run_ours(ours, inputs)
    assert (got - expected).abs().max().item() <= tolerance(expected)
    for b in range(2):
        alone = run_ours(ours, select(inputs, b))
        assert (got[b : b + 1] - alone).abs().max().item() <= tolerance(alone)
        # diffusers' [B,1,1,N] key mask gives each sample its batch-1 result too
        diffusers_alone = run_diffusers(reference, select(inputs, b))
        assert (expected[b : b + 1] - diffusers_alone).abs().max().item() <= tolerance(diffusers_alone)


def test_batch3_equal_text_lengths_use_no_mask(models: tuple) -> None:
    reference, ours, _, _ = models
    inputs = make_inputs(3, [4, 4, 4], seed=5)
    expected = run_diffusers(reference, inputs)
    assert (run_ours(ours, inputs) - expected).abs().max().item() <= tolerance(expected)


@pytest.mark.parametrize("with_image", [True, False])
def test_no_context_matches_transcription(models: tuple, with_image: bool) -> None:
    _, ours, state, _ = models
    inputs = make_inputs(1, [6], seed=7, height=12, width=6)
    expected = reference_forward(state, TINY, inputs, with_context=False, with_image=with_image)
    got = run_ours(ours, inputs, with_context=False, with_image=with_image)
    assert got.shape == inputs["latents"].shape
    assert (got - expected).abs().max().item() <= tolerance(expected)


def test_no_image_embeds_with_context_matches_transcription(models: tuple) -> None:
    _, ours, state, _ = models
    inputs = make_inputs(1, [2], seed=8, layout="f1")
    expected = reference_forward(state, TINY, inputs, with_image=False)
    assert (run_ours(ours, inputs, with_image=False) - expected).abs().max().item() <= tolerance(expected)


def test_no_context_batch_equals_each_sample_alone(models: tuple) -> None:
    _, ours, state, _ = models
    inputs = make_inputs(2, [7, 2], seed=9)
    got = run_ours(ours, inputs, with_context=False)
    assert got.shape == inputs["latents"].shape
    for b in range(2):
        expected = reference_forward(state, TINY, select(inputs, b), with_context=False)
        assert (got[b : b + 1] - expected).abs().max().item() <= tolerance(expected)
