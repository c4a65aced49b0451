"""plan_pipeline_memory against hand-worked budgets (sizes in GiB for readable arithmetic)."""

from __future__ import annotations

import pytest

from framepack.errors import ConfigError
from framepack.memory.planner import plan_pipeline_memory
from framepack.memory.residency import ComponentSize

G = 1 << 30

# Weights: transformer 1 + 10x1 = 11, Llama 1 + 8x1 = 9, CLIP 1, SigLIP 1, VAE 1 -> 23 GiB.
COMPONENTS = {
    "transformer": ComponentSize(1 * G, (1 * G,) * 10),
    "text_encoder": ComponentSize(1 * G, (1 * G,) * 8),
    "text_encoder_2": 1 * G,
    "image_encoder": 1 * G,
    "vae": 1 * G,
}
ACTIVATIONS = {"text": G // 2, "image": 2 * G, "sampling": 1 * G, "decode": 5 * G + G // 2}


def plan(budget: float | None, activations: dict[str, int] = ACTIVATIONS):  # type: ignore[no-untyped-def]
    return plan_pipeline_memory(budget, COMPONENTS, activations, tiled_vae_activation_bytes=1 * G, prefetch=1)


@pytest.mark.parametrize("budget", [None, 30])
def test_everything_resident_when_unbudgeted_or_it_fits(budget: float | None) -> None:
    # 23 GiB of weights + the largest phase (decode 5.5) = 28.5 <= 30
    p = plan(budget)
    assert not p.swap_components and not p.vae_tiling
    assert p.streaming["transformer"].streamed == () and p.streaming["text_encoder"].streamed == ()
    assert p.phase_device_bytes["decode"] == 23 * G + 5 * G + G // 2


def test_six_gib_swaps_streams_and_tiles() -> None:
    p = plan(6)
    assert p.swap_components
    # decode untiled: VAE 1 + 5.5 = 6.5 > 6 -> tiling, tiled activations 1
    assert p.vae_tiling
    # sampling: room 6 - 1 (act) - 1 (fixed) = 4; (10 - s) + 2 slots <= 4 -> s = 8, spread over 10
    assert p.streaming["transformer"].streamed == (1, 2, 3, 4, 6, 7, 8, 9)
    # text: room 6 - 0.5 - 1 (Llama fixed) - 1 (CLIP) = 3.5; (8 - s) + 2 <= 3.5 -> s = 7
    assert p.streaming["text_encoder"].streamed == (1, 2, 3, 4, 5, 6, 7)
    assert p.phase_device_bytes == {"text": 5 * G + G // 2, "image": 3 * G, "sampling": 6 * G, "decode": 2 * G}


def test_no_tiling_when_the_vae_fits() -> None:
    p = plan(6, {**ACTIVATIONS, "decode": 5 * G})  # 1 + 5 = 6 fits exactly
    assert p.swap_components and not p.vae_tiling
    assert p.phase_device_bytes["decode"] == 6 * G and p.phase_device_bytes["image"] == 4 * G


def test_too_small_budget_names_the_phase_and_minimum() -> None:
    # text: 0.5 act + 2 whole + 2 slots of 1 GiB = 4.5 GiB minimum
    with pytest.raises(ConfigError, match=r"text phase: it needs at least 4\.50 GiB"):
        plan(2.5)


@pytest.mark.parametrize(
    ("components", "activations", "needle"),
    [
        ({"unet": 5}, {}, "unknown component"),
        ({"vae": 5}, {"image": 1}, r"lacks phase\(s\) \['decode'\]"),
        ({"vae": -1}, {"image": 1, "decode": 1}, "must be >= 0"),
    ],
)
def test_bad_inputs(components: dict[str, int], activations: dict[str, int], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        plan_pipeline_memory(4, components, activations)


def test_tiling_needed_without_estimate_is_an_error() -> None:
    with pytest.raises(ConfigError, match="tiled_vae_activation_bytes"):
        plan_pipeline_memory(6, COMPONENTS, ACTIVATIONS)
