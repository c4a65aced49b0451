from __future__ import annotations

import math

import pytest
import torch

from framepack.errors import ConfigError
from framepack.sampling.schedule import flux_sigmas, sequence_length, time_shift_mu

# The reference app's schedule: N = 25, mu = ln 7 (every 640 bucket with window 9)
REFERENCE_25 = [
    1.0000,
    0.9941,
    0.9877,
    0.9809,
    0.9735,
    0.9655,
    0.9568,
    0.9474,
    0.9370,
    0.9256,
    0.9130,
    0.8991,
    0.8835,
    0.8660,
    0.8462,
    0.8235,
    0.7975,
    0.7671,
    0.7313,
    0.6885,
    0.6364,
    0.5714,
    0.4884,
    0.3784,
    0.2258,
    0.0,
]


def test_reference_values_at_640_bucket() -> None:
    seq_len = sequence_length(33, 640, 608)
    assert seq_len == 9 * 80 * 76 // 4 == 13680
    sigmas = flux_sigmas(25, seq_len)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (26,)
    assert torch.allclose(sigmas, torch.tensor(REFERENCE_25), atol=5.1e-5, rtol=0)
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0


def test_mu_rule_small_size_and_cap() -> None:
    assert sequence_length(33, 64, 64) == 144
    assert time_shift_mu(144) == pytest.approx(0.48104166, abs=1e-8)  # 0.5 - 112·0.65/3840
    assert time_shift_mu(13680) == math.log(7.0)
    assert time_shift_mu(256) == pytest.approx(0.5) and time_shift_mu(4096) == pytest.approx(1.15)


def test_shift_override_hand_values() -> None:
    # shift 3: sigma = 3t / (1 + 2t) at t = 1, .75, .5, .25, 0
    sigmas = flux_sigmas(4, 144, shift=3.0)
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-7, rtol=0)
    # shift 1 is no shift at all: linspace
    assert torch.allclose(flux_sigmas(4, 99999, shift=1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), atol=1e-7)


@pytest.mark.parametrize(
    "kwargs", [dict(steps=0, seq_len=10), dict(steps=3, seq_len=10, shift=0.0), dict(steps=2.5, seq_len=1)]
)
def test_bad_schedule_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        flux_sigmas(**kwargs)
