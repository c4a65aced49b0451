"""prepare/denoise split, the cache and streaming hooks, presets and input errors."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import framepack.models.transformer as transformer_module
from framepack.cache.base import CachePolicy, CacheStep, NoCache
from framepack.conditioning import Conditioning
from framepack.errors import ConfigError, InputError
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_


@pytest.fixture(scope="module")
def model() -> FramePackTransformer:
    torch.manual_seed(0)
    m = FramePackTransformer(TransformerConfig.preset("tiny", num_refiner_layers=2)).eval()
    randomise_(m, 3)
    return m


@pytest.fixture(scope="module")
def inputs() -> dict:
    return make_inputs(1, [5], seed=2)


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_step_invariant_work_runs_once_per_prepare(inputs: dict) -> None:
    torch.manual_seed(0)
    m = FramePackTransformer(TransformerConfig.preset("tiny")).eval()
    counted = {
        "clean_embed": count_calls(m.clean_embed),
        "image_projection": count_calls(m.image_projection),
        "proj_in": count_calls(m.text_refiner.proj_in),
        "guidance_embed": count_calls(m.guidance_embed),
        "timestep_embed": count_calls(m.timestep_embed),
        "refiner_block": count_calls(m.text_refiner.blocks[0]),
        "patch_embed": count_calls(m.patch_embed),
    }
    cond, context = conditioning_and_context(inputs)
    with mock.patch.object(transformer_module, "rope_table", wraps=transformer_module.rope_table) as rope:
        prepared = m.prepare(cond, context, inputs["latents"].shape)
        for step in range(5):
            m.denoise(inputs["latents"], torch.tensor([900.0 - 100 * step]), prepared)
    calls = {name: c[0] for name, c in counted.items()}
    assert rope.call_count == 4  # noisy window + 1x, 2x, 4x groups, once
    assert calls == {
        "clean_embed": 3,
        "image_projection": 1,
        "proj_in": 1,
        "guidance_embed": 1,
        "timestep_embed": 5,
        "refiner_block": 5,
        "patch_embed": 5,  # these depend on the step
    }


def test_forward_is_prepare_then_denoise(model: FramePackTransformer, inputs: dict) -> None:
    cond, context = conditioning_and_context(inputs)
    prepared = model.prepare(cond, context, inputs["latents"].shape)
    assert torch.equal(
        model(inputs["latents"], inputs["timestep"], cond, context),
        model.denoise(inputs["latents"], inputs["timestep"], prepared),
    )


class Recording(CachePolicy):
    """Computes on the first call of a section only; records what it was shown."""

    needs_modulated_input = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[CacheStep] = []

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        self.seen.append(step)
        return step.step == 0


def test_cache_policy_drives_the_block_stack(model: FramePackTransformer, inputs: dict) -> None:
    cond, context = conditioning_and_context(inputs)
    prepared = model.prepare(cond, context, inputs["latents"].shape)
    plain = model.denoise(inputs["latents"], inputs["timestep"], prepared)
    nocache = NoCache()
    nocache.start_section(2)
    assert torch.equal(model.denoise(inputs["latents"], inputs["timestep"], prepared, cache=nocache), plain)

    policy = Recording()
    policy.start_section(3)
    first = model.denoise(inputs["latents"], inputs["timestep"], prepared, cache=policy)
    assert (first - plain).abs().max() <= 1e-5 * max(1, plain.abs().max().item())
    other = inputs["latents"] * 0.5
    negative = policy.branch("negative")  # what real CFG passes for its negative pass
    skipped = model.denoise(other, inputs["timestep"], prepared, cache=negative)
    assert policy.stats[-1].computed == {"positive": [0], "negative": [0]}
    reused = model.denoise(other, torch.tensor([500.0]), prepared, cache=negative)
    assert policy.stats[-1].skipped == {"negative": [1]}
    assert not torch.equal(reused, skipped)  # same residual, but the output head sees a new timestep

    # block 0's modulated input: LN(x)*(1+scale_msa)+shift_msa, computed here from the weights
    step = policy.seen[0]
    x = step.stack_input
    t_freq = transformer_module.timestep_sinusoid(inputs["timestep"])
    temb = model.timestep_embed(t_freq) + prepared.guidance_emb + prepared.pooled_emb
    fused = model.double_blocks[0].modulation  # rows: checkpoint norm1.linear, then norm1_context
    rows = 6 * model.config.inner_dim
    shift, scale = F.linear(F.silu(temb), fused.weight[:rows], fused.bias[:rows]).chunk(6, -1)[:2]
    expected = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert torch.allclose(step.modulated_input, expected, atol=1e-6, rtol=1e-5)


def test_run_first_then_rest_equals_run_all(model: FramePackTransformer, inputs: dict) -> None:
    cond, context = conditioning_and_context(inputs)
    prepared = model.prepare(cond, context, inputs["latents"].shape)
    stacks = []
    real_stack = transformer_module.TransformerStack

    def keep(*args: Any) -> Any:
        stacks.append(real_stack(*args))
        return stacks[-1]

    with mock.patch.object(transformer_module, "TransformerStack", side_effect=keep):
        model.denoise(inputs["latents"], inputs["timestep"], prepared)
    stack = stacks[0]
    x_in = stack.stack_input.clone()
    full = stack.run_all().clone()
    assert torch.equal(stack.stack_input, x_in)  # the policy's base stays intact
    after_first = stack.run_first().clone()
    rest = stack.run_rest()
    assert not torch.equal(after_first, x_in)
    assert torch.equal(rest, full)


class Streaming(FramePackTransformer):
    """Records every block fetch, as the block streamer will."""

    fetched: list[int]

    def _blocks(self, start: int, stop: int):  # type: ignore[override]
        for index, block in zip(range(start, stop), super()._blocks(start, stop)):
            self.fetched.append(index)
            yield block


def test_every_block_is_fetched_through_blocks(model: FramePackTransformer, inputs: dict) -> None:
    streaming = Streaming(model.config).eval()
    streaming.load_state_dict(model.state_dict())
    streaming.fetched = []
    cond, context = conditioning_and_context(inputs)
    out = streaming(inputs["latents"], inputs["timestep"], cond, context)
    assert streaming.fetched == list(range(model.num_blocks))
    assert torch.equal(out, model(inputs["latents"], inputs["timestep"], cond, context))


def test_presets() -> None:
    real = TransformerConfig.preset("framepack")
    assert (real.inner_dim, real.num_layers, real.num_single_layers, real.rope_axes_dim) == (3072, 20, 40, (16, 56, 56))
    medium = TransformerConfig.preset("medium")
    assert medium.inner_dim == 512 and medium.num_layers >= 2 and medium.num_single_layers >= 4
    assert TransformerConfig.preset("tiny", num_layers=1).num_layers == 1
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        TransformerConfig.preset("huge")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rope_axes_dim": (4, 6, 8)}, "must sum to attention_head_dim"),
        ({"qk_norm": "layer_norm"}, "qk_norm"),
        ({"image_condition_type": "token_replace"}, "image_condition_type"),
    ],
)
def test_bad_config_is_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TransformerConfig.preset("tiny", **overrides)


def test_bad_inputs_name_the_field(model: FramePackTransformer, inputs: dict) -> None:
    cond, context = conditioning_and_context(inputs)
    latents, t = inputs["latents"], inputs["timestep"]
    with pytest.raises(InputError, match="latents: expected 16 channels"):
        model(latents[:, :8], t, cond, context)
    with pytest.raises(InputError, match="multiples of 2"):
        model(latents[..., :9], t, cond, None)
    with pytest.raises(InputError, match="timestep: expected shape"):
        model(latents, torch.ones(3), cond, context)
    with pytest.raises(InputError, match="conditioning: expected batch 2"):
        model(torch.cat([latents, latents]), torch.ones(2), cond, None)
    wrong_text = Conditioning(torch.zeros(1, 4, 31), torch.ones(1, 4, dtype=torch.bool), cond.pooled, cond.guidance)
    with pytest.raises(InputError, match="text_embeds: expected 32 features"):
        model(latents, t, wrong_text, context)
    with pytest.raises(InputError, match="latent_indices"):
        model(latents[:, :, :2], t, cond, context)
    prepared = model.prepare(cond, context, latents.shape)
    with pytest.raises(InputError, match="the shape given to prepare"):
        model.denoise(latents[..., :8], t, prepared)


def test_image_embeds_need_an_image_projection(inputs: dict) -> None:
    m = FramePackTransformer(TransformerConfig.preset("tiny", has_image_proj=False))
    cond, _ = conditioning_and_context(inputs)
    with pytest.raises(InputError, match="image_embeds: this model has no image projection"):
        m(inputs["latents"], inputs["timestep"], cond)
    cond, _ = conditioning_and_context(inputs, with_image=False)
    assert m(inputs["latents"], inputs["timestep"], cond).shape == inputs["latents"].shape
