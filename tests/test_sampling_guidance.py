from __future__ import annotations

import numpy as np
import pytest
import torch

from framepack.errors import ConfigError
from framepack.sampling.guidance import GuidedDenoiser, combine_guidance
from framepack.sampling.schedule import flux_sigmas, sequence_length
from framepack.sampling.unipc import sample_unipc
from tests.sampling_fakes import FakeTransformer, Prepared

POS = torch.linspace(-1, 2, 2 * 16 * 2 * 3 * 3).view(2, 16, 2, 3, 3)
NEG = torch.cos(torch.arange(POS.numel(), dtype=torch.float32)).view_as(POS)


def branch_velocity(latents: torch.Tensor, timestep: torch.Tensor, prepared: Prepared, branch: str) -> torch.Tensor:
    return POS if branch == "positive" else NEG


PREPARED = Prepared(0, None, None, tuple(POS.shape))  # type: ignore[arg-type]
NEGATIVE = Prepared(0, None, None, tuple(POS.shape), "negative")  # type: ignore[arg-type]


def test_cfg_one_skips_the_negative_pass() -> None:
    fake = FakeTransformer(branch_velocity)
    x = torch.randn(POS.shape)
    x0 = GuidedDenoiser(fake, PREPARED, NEGATIVE, real_cfg=1.0)(x, 0.5)
    assert [c.branch for c in fake.calls] == ["positive"]
    assert torch.allclose(x0, x - 0.5 * POS, atol=1e-6, rtol=0)


def test_real_cfg_and_rescale_by_hand() -> None:
    fake = FakeTransformer(branch_velocity)
    x = torch.randn(POS.shape)
    x0 = GuidedDenoiser(fake, PREPARED, NEGATIVE, real_cfg=3.0, cfg_rescale=0.7)(x, 0.25)
    assert [c.branch for c in fake.calls] == ["positive", "negative"]

    pos, neg = POS.double().numpy(), NEG.double().numpy()
    cfg = neg + 3.0 * (pos - neg)
    expected_v = np.empty_like(cfg)
    for b in range(2):  # per sample, Bessel-corrected std
        rescaled = cfg[b] * (pos[b].std(ddof=1) / cfg[b].std(ddof=1))
        expected_v[b] = 0.7 * rescaled + 0.3 * cfg[b]
    expected = x.double().numpy() - 0.25 * expected_v
    assert np.abs(x0.double().numpy() - expected).max() <= 1e-5 * max(1, np.abs(expected).max())


def test_combine_without_rescale_is_plain_cfg() -> None:
    assert torch.allclose(combine_guidance(POS, NEG, 2.0, 0.0), 2 * POS - NEG, atol=1e-6)
    assert torch.equal(combine_guidance(POS, None, 1.0, 0.0), POS)


def test_bf16_model_rounds_latents_and_timesteps_as_reference() -> None:
    # The reference's schedule: the transformer sees bf16(sigma·1000) for the N = 25, mu = ln 7 schedule.
    expected = [
        1000,
        996,
        988,
        980,
        972,
        964,
        956,
        948,
        936,
        924,
        912,
        900,
        884,
        864,
        848,
        824,
        796,
        768,
        732,
        688,
        636,
        572,
        488,
        378,
        226,
    ]
    fake = FakeTransformer(lambda x, t, p, b: torch.zeros(x.shape), dtype=torch.bfloat16)
    x = torch.randn(1, 16, 1, 2, 2)
    sigmas = flux_sigmas(25, sequence_length(33, 640, 608))
    out = sample_unipc(GuidedDenoiser(fake, PREPARED), x, sigmas)
    assert [c.timestep.item() for c in fake.calls] == expected
    assert all(c.timestep.dtype == torch.bfloat16 and c.latents.dtype == torch.bfloat16 for c in fake.calls)
    # zero velocity: x0 is the bf16-rounded latent the model saw, returned as float32
    assert out.dtype == torch.float32 and torch.equal(out, fake.calls[-1].latents.float())


def test_float32_model_sees_unrounded_inputs() -> None:
    fake = FakeTransformer(lambda x, t, p, b: torch.zeros(x.shape))
    x = torch.randn(1, 16, 1, 2, 2)
    GuidedDenoiser(fake, PREPARED)(x, 0.9941)
    assert torch.equal(fake.calls[0].latents, x)
    assert fake.calls[0].timestep.dtype == torch.float32
    assert fake.calls[0].timestep.item() == pytest.approx(994.1, abs=1e-3)


def test_real_cfg_without_negative_is_refused() -> None:
    with pytest.raises(ConfigError):
        GuidedDenoiser(FakeTransformer(), PREPARED, None, real_cfg=2.0)
