"""Cache policies on a scripted block stack, against transcriptions of the reference rules.

The fake stack returns scripted tensors and counts which run_* ran, so every decision and
every output can be checked exactly. Expected values come from the published
schedules (FramePack-Studio's MagCache ratios, interpolation examples) or from independent transcriptions written here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from examples.custom_cache_policy import SkipAlternateMiddleSteps
from framepack.cache import (
    FRAMEPACK_F1_25,
    FRAMEPACK_I2V_25,
    CachePolicy,
    FirstBlockCache,
    MagCache,
    MagCacheCalibration,
    NoCache,
    TeaCache,
    calibrate,
    parse_cache_spec,
    resample_ratios,
)
from framepack.errors import ConfigError, InputError
from framepack.models import transformer as transformer_module
from framepack.models.layers import Scratch
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_


@dataclass
class Call:
    """One scripted transformer call: the tensors a real block stack would produce."""

    stack_input: torch.Tensor
    modulated: torch.Tensor
    after_first: torch.Tensor
    output: torch.Tensor


@dataclass
class FakeStack:
    call: Call
    ran: list[str] = field(default_factory=list)

    @property
    def stack_input(self) -> torch.Tensor:
        return self.call.stack_input

    def modulated_input(self) -> torch.Tensor:
        self.ran.append("modulated")
        return self.call.modulated

    def run_first(self) -> torch.Tensor:
        self.ran.append("first")
        return self.call.after_first

    def run_rest(self) -> torch.Tensor:
        assert "first" in self.ran
        self.ran.append("rest")
        return self.call.output

    def run_all(self) -> torch.Tensor:
        self.ran.append("all")
        return self.call.output

    def agree(self, compute: bool) -> bool:
        return compute


def scripted_calls(steps: int, seed: int, dtype: torch.dtype = torch.float32, shape=(1, 6, 8)) -> list[Call]:
    """Inputs whose step-to-step change varies (small, medium, large) so policies both skip and compute."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    first = torch.randn(shape, generator=gen)
    calls = []
    for i in range(steps):
        drift = [0.005, 0.02, 0.04, 0.08, 0.15, 0.3][(i * 7 + seed) % 6]
        base = base + drift * torch.randn(shape, generator=gen) * base.abs().mean()
        first = first + drift * torch.randn(shape, generator=gen) * first.abs().mean()
        x_in = torch.randn(shape, generator=gen)
        after_first = x_in + first
        calls.append(Call(x_in, base.to(dtype), after_first, after_first + torch.randn(shape, generator=gen)))
    return calls


def run_policy(
    policy: CachePolicy, calls: list[Call], branch: str = "positive"
) -> tuple[list[bool], list[torch.Tensor]]:
    """Feed the calls through ``policy`` (its ``branch`` view for another branch, as real CFG does);
    returns per call (computed?, output)."""
    runner = policy if branch == "positive" else policy.branch(branch)
    decisions, outputs = [], []
    for call in calls:
        stack = FakeStack(call)
        outputs.append(runner.run(stack))
        decisions.append("all" in stack.ran or "rest" in stack.ran)
    return decisions, outputs


# --- TeaCache --------------------------------------------------------------------------------


def reference_teacache(calls: list[Call], num_steps: int, threshold: float) -> tuple[list[bool], list[torch.Tensor]]:
    """FramePack's TeaCache (hunyuan_video_packed.py) restated step by step, with numpy's poly1d."""
    poly = np.poly1d([7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02])
    cnt, acc, prev, residual = 0, 0.0, None, None
    decisions, outputs = [], []
    for call in calls:
        mod = call.modulated
        if cnt == 0 or cnt == num_steps - 1:
            calc, acc = True, 0.0
        else:
            acc += poly(((mod - prev).abs().mean() / prev.abs().mean()).cpu().item())
            calc = acc >= threshold
            if calc:
                acc = 0.0
        prev = mod
        cnt = 0 if cnt + 1 == num_steps else cnt + 1
        if calc:
            residual = call.output - call.stack_input
            outputs.append(call.output)
        else:
            outputs.append(call.stack_input + residual)
        decisions.append(calc)
    return decisions, outputs


@pytest.mark.parametrize("threshold", [0.1, 0.15, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_teacache_equals_reference_rule(threshold: float, dtype: torch.dtype) -> None:
    calls = scripted_calls(25, seed=1, dtype=dtype)
    expected_decisions, expected_outputs = reference_teacache(calls, 25, threshold)
    policy = TeaCache(threshold)
    policy.start_section(25)
    decisions, outputs = run_policy(policy, calls)
    assert decisions == expected_decisions
    assert True in decisions[1:-1] and False in decisions  # the script exercises both branches of the rule
    for ours, theirs in zip(outputs, expected_outputs):
        assert torch.equal(ours, theirs)
    assert decisions[0] and decisions[-1]


def test_teacache_threshold_zero_is_nocache_bit_for_bit() -> None:
    calls = scripted_calls(25, seed=2)
    tea, none = TeaCache(0.0), NoCache()
    tea.start_section(25)
    none.start_section(25)
    tea_decisions, tea_out = run_policy(tea, calls)
    none_decisions, none_out = run_policy(none, calls)
    assert tea_decisions == none_decisions == [True] * 25
    assert all(torch.equal(a, b) for a, b in zip(tea_out, none_out))
    assert tea.stats[-1].skipped_count == 0


def test_teacache_counter_wraps_like_the_reference() -> None:
    # 30 calls in a 12-step section: the reference counter wraps at 12 and forces calls 0, 11, 12, 23, 24.
    calls = scripted_calls(30, seed=3)
    policy = TeaCache(0.15)
    policy.start_section(12)
    decisions, _ = run_policy(policy, calls)
    assert decisions == reference_teacache(calls, 12, 0.15)[0]


# --- sections, branches, statistics, subclassing -----------------------------------------------


@pytest.mark.parametrize("make", [lambda: TeaCache(0.15), lambda: FirstBlockCache(0.3), lambda: MagCache()])
def test_policies_reset_between_sections(make) -> None:
    calls = scripted_calls(25, seed=4)
    policy = make()
    policy.start_section(25)
    first, _ = run_policy(policy, calls)
    policy.start_section(25)
    second, _ = run_policy(policy, calls)
    fresh = make()
    fresh.start_section(25)
    assert first == second == run_policy(fresh, calls)[0]
    assert [s.computed["positive"] for s in policy.stats] == [[i for i, c in enumerate(first) if c]] * 2


@pytest.mark.parametrize("make", [lambda: TeaCache(0.15), lambda: FirstBlockCache(0.3), lambda: MagCache()])
def test_branches_keep_separate_state(make) -> None:
    positive, negative = scripted_calls(25, seed=5), scripted_calls(25, seed=6)
    alone = {}
    for name, calls in (("positive", positive), ("negative", negative)):
        single = make()
        single.start_section(25)
        alone[name] = run_policy(single, calls, name)
    policy = make()
    policy.start_section(25)
    together = {"positive": ([], []), "negative": ([], [])}
    for pos, neg in zip(positive, negative):  # sequential CFG: positive then negative each step
        for name, call in (("positive", pos), ("negative", neg)):
            decision, output = run_policy(policy, [call], name)
            together[name][0].extend(decision)
            together[name][1].extend(output)
    for name in ("positive", "negative"):
        assert together[name][0] == alone[name][0]
        assert all(torch.equal(a, b) for a, b in zip(together[name][1], alone[name][1]))
    stats = policy.stats[-1]
    assert stats.computed_count + stats.skipped_count == 50


def test_statistics_count_computed_and_skipped_per_branch() -> None:
    policy = SkipAlternateMiddleSteps(warmup=0.2, cooldown=0.1)
    policy.start_section(10)
    run_policy(policy, scripted_calls(10, seed=7))
    # 10 steps: steps 0-1 warm-up, 9 cooldown, middle 2..8 alternates starting with a compute.
    stats = policy.stats[-1]
    assert stats.num_steps == 10
    assert stats.computed == {"positive": [0, 1, 2, 4, 6, 8, 9]}
    assert stats.skipped == {"positive": [3, 5, 7]}
    assert (stats.computed_count, stats.skipped_count) == (7, 3)


def test_subclass_plugs_in_and_reuses_the_stored_residual() -> None:
    calls = scripted_calls(10, seed=8)
    policy = SkipAlternateMiddleSteps()
    policy.start_section(10)
    _, outputs = run_policy(policy, calls)
    assert torch.equal(outputs[2], calls[2].output)
    assert torch.equal(outputs[3], calls[3].stack_input + (calls[2].output - calls[2].stack_input))


def test_a_policy_that_never_computes_still_computes_its_first_call() -> None:
    class Never(CachePolicy):
        def should_compute(self, step, state) -> bool:
            return False

    policy = Never()
    policy.start_section(3)
    decisions, _ = run_policy(policy, scripted_calls(3, seed=9))
    assert decisions == [True, False, False]


def test_nocache_and_magcache_do_not_ask_for_indicators() -> None:
    for policy in (NoCache(), MagCache()):
        policy.start_section(25)
        for call in scripted_calls(25, seed=10):
            stack = FakeStack(call)
            policy.run(stack)
            assert "modulated" not in stack.ran and "first" not in stack.ran


def test_run_before_start_section_and_stale_shapes_are_errors() -> None:
    with pytest.raises(ConfigError, match="start_section"):
        TeaCache().run(FakeStack(scripted_calls(1, seed=11)[0]))
    policy = SkipAlternateMiddleSteps(warmup=0.0, cooldown=0.0)
    policy.start_section(4)
    run_policy(policy, scripted_calls(1, seed=12))
    with pytest.raises(InputError, match="shape"):
        run_policy(policy, scripted_calls(1, seed=12, shape=(1, 5, 8)))
    with pytest.raises(ConfigError):
        policy.start_section(0)


# --- MagCache ------------------------------------------------------------------------------

# FP-Studio "Original", resolution 640, 25 steps (FramePack-Studio's MagCache calibration table).
FP_STUDIO_ORIGINAL_640_25 = [
    1.0, 1.30469, 1.22656, 1.05469, 1.02344, 1.03906, 1.02344, 1.03906, 1.05469, 1.02344, 1.03906, 0.99609, 1.02344,
    1.03125, 1.01562, 1.02344, 1.00781, 1.03906, 0.98828, 1.0, 1.0, 0.98828, 0.94531, 0.93359, 0.78516,
]  # fmt: skip

# rule "fp": (table, N, δ, K, r) -> skipped steps.
PUBLISHED_SCHEDULES = [
    (FRAMEPACK_I2V_25, 25, 0.1, 3, 0.2, [5, 6, 8, 10, 11, 13, 14, 16, 17, 19, 20, 21, 23]),
    (FRAMEPACK_I2V_25, 25, 0.15, 4, 0.2, [5, 6, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21, 22]),
    (FRAMEPACK_F1_25, 25, 0.1, 3, 0.2, [5, 6, 8, 10, 11, 13, 14, 15, 17, 18, 19, 21, 23]),
    (FRAMEPACK_F1_25, 25, 0.15, 4, 0.2, [5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 18, 19, 20, 21, 23]),
    (FRAMEPACK_I2V_25, 25, 0.1, 2, 0.2, [5, 6, 8, 10, 11, 13, 14, 16, 17, 19, 20, 22]),
    (FRAMEPACK_I2V_25, 30, 0.1, 3, 0.2, [6, 7, 9, 11, 12, 14, 15, 17, 18, 20, 22, 23, 24, 26, 28]),
    (FP_STUDIO_ORIGINAL_640_25, 25, 0.1, 2, 0.25, [6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22]),
    (FP_STUDIO_ORIGINAL_640_25, 30, 0.1, 2, 0.25, [7, 8, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27]),
    (FP_STUDIO_ORIGINAL_640_25, 25, 0.1, 3, 0.2, [5, 7, 9, 10, 12, 13, 15, 16, 18, 19, 20, 22]),
]


@pytest.mark.parametrize("table, steps, threshold, max_skips, retention, skipped", PUBLISHED_SCHEDULES)
def test_magcache_matches_published_schedules(table, steps, threshold, max_skips, retention, skipped) -> None:
    policy = MagCache(threshold=threshold, max_skips=max_skips, retention=retention, ratios=table)
    assert policy.planned_skips(steps) == skipped
    calls = scripted_calls(steps, seed=13)
    policy.start_section(steps)
    decisions, outputs = run_policy(policy, calls)
    assert [i for i, computed in enumerate(decisions) if not computed] == skipped
    assert policy.stats[-1].skipped == {"positive": skipped}
    last_computed = None
    for i, computed in enumerate(decisions):  # a skip adds the residual of the last computed call
        if computed:
            last_computed = i
            assert torch.equal(outputs[i], calls[i].output)
        else:
            residual = calls[last_computed].output - calls[last_computed].stack_input
            assert torch.equal(outputs[i], calls[i].stack_input + residual)


def test_magcache_defaults_are_the_demo_settings() -> None:
    policy = MagCache()
    assert (policy.threshold, policy.max_skips, policy.retention, policy.max_ratio_deviation) == (0.1, 3, 0.2, 0.06)
    assert policy.planned_skips(25) == PUBLISHED_SCHEDULES[0][-1]


RESAMPLED_25_TO_30 = [
    0,
    1,
    2,
    2,
    3,
    4,
    5,
    6,
    7,
    7,
    8,
    9,
    10,
    11,
    12,
    12,
    13,
    14,
    15,
    16,
    17,
    17,
    18,
    19,
    20,
    21,
    22,
    22,
    23,
    24,
]


@pytest.mark.parametrize(
    "source, target, indices",
    [
        (25, 30, RESAMPLED_25_TO_30),
        (25, 20, [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19, 20, 21, 23, 24]),
        (50, 25, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49]),
        (25, 1, [24]),
        (25, 25, list(range(25))),
    ],
)
def test_resample_ratios_uses_the_published_nearest_indices(source: int, target: int, indices: list[int]) -> None:
    assert resample_ratios([float(i) for i in range(source)], target) == [float(i) for i in indices]


def reference_nearest_indices(length: int, num_steps: int) -> list[int]:
    """The MagCache reference's nearest_interp indices: numpy rounding of the float product."""
    if num_steps == 1:
        return [length - 1]
    scale = (length - 1) / (num_steps - 1)
    return np.round(np.arange(num_steps) * scale).astype(int).tolist()


@pytest.mark.parametrize("length", [25, 50, 75])
def test_resample_ratios_picks_the_references_indices_for_every_step_count(length: int) -> None:
    table = [float(i) for i in range(length)]
    for num_steps in range(1, 1001):
        expected = [float(i) for i in reference_nearest_indices(length, num_steps)]
        assert resample_ratios(table, num_steps) == expected, num_steps


def test_resample_ratios_takes_the_lower_entry_where_the_float_product_falls_short_of_half() -> None:
    # 55·24/176 and 99·24/176 are 7.5 and 13.5 exactly; the float products 55·(24/176) and
    # 99·(24/176) are just under, so the reference takes entries 7 and 13 (half-to-even on
    # the exact fractions would take 8 and 14).
    resampled = resample_ratios([float(i) for i in range(25)], 177)
    assert 55 * (24 / 176) < 7.5 and 99 * (24 / 176) < 13.5
    assert (resampled[55], resampled[99]) == (7.0, 13.0)


def test_magcache_ratio_gate_forbids_skipping_a_step_that_deviates() -> None:
    # Hand-worked, δ 1, K 3, no retention: c=1 ρ=1.05 E=0.05 skip; c=2 ρ=1.1235 E=0.1735 but
    # |1-1.07| > 0.06 so compute (reset); c=3 ρ=1.0 E=0 skip. Without the gate c=2 is skipped too.
    table = [1.0, 1.05, 1.07, 1.0]
    assert MagCache(threshold=1.0, retention=0.0, ratios=table).planned_skips(4) == [1, 3]
    assert MagCache(threshold=1.0, retention=0.0, ratios=table, max_ratio_deviation=0.1).planned_skips(4) == [1, 2, 3]


def test_magcache_rejects_bad_settings() -> None:
    for kwargs in ({"threshold": -0.1}, {"max_skips": -1}, {"max_skips": 1.5}, {"retention": 1.5}, {"ratios": []},
                   {"ratios": [1.0, 0.0]}, {"max_ratio_deviation": float("nan")}):  # fmt: skip
        with pytest.raises(ConfigError):
            MagCache(**kwargs)


# --- MagCache calibration --------------------------------------------------------------------


def residual_calls(residuals: list[list[list[float]]]) -> list[Call]:
    calls = []
    for r in residuals:
        x_in = torch.zeros(1, len(r), len(r[0]))
        calls.append(Call(x_in, x_in, x_in, x_in + torch.tensor([r])))
    return calls


def test_calibration_records_mean_token_norm_ratios() -> None:
    # Per-token norms: (5, 1) -> (10, 3) -> (5, 1); ratios mean(2, 3) = 2.5 and mean(0.5, 1/3) = 5/12.
    calls = residual_calls([[[3, 4], [0, 1]], [[6, 8], [0, 3]], [[0, 5], [1, 0]]])
    calibration = MagCacheCalibration()
    calibration.start_section(3)
    decisions, outputs = run_policy(calibration, calls)
    assert decisions == [True] * 3
    assert all(torch.equal(o, c.output) for o, c in zip(outputs, calls))
    assert calibration.table() == pytest.approx([1.0, 2.5, 5 / 12], rel=1e-6)
    # A second section starts a new table; branches are recorded separately.
    calibration.start_section(2)
    run_policy(calibration, calls[:2], "negative")
    assert calibration.table("negative") == pytest.approx([1.0, 2.5], rel=1e-6)
    assert calibration.table("positive", section=0) == pytest.approx([1.0, 2.5, 5 / 12], rel=1e-6)
    with pytest.raises(ConfigError):
        calibration.table("positive")


def test_calibrate_runs_a_generation_and_returns_its_table() -> None:
    calls = residual_calls([[[3, 4], [0, 1]], [[6, 8], [0, 3]], [[0, 5], [1, 0]]])

    def generate(cache: Callable[[], CachePolicy]) -> None:  # a factory: every run builds its policy
        policy = cache()
        policy.start_section(3)
        run_policy(policy, calls)

    table = calibrate(generate)
    assert table == pytest.approx([1.0, 2.5, 5 / 12], rel=1e-6)
    assert MagCache(ratios=table).ratios == tuple(table)


# --- FirstBlockCache -------------------------------------------------------------------------


def reference_first_block(calls: list[Call], threshold: float) -> tuple[list[bool], list[torch.Tensor]]:
    """ParaAttention's first-block-cache rule: reuse iff rel(r_ref, r1) < threshold; r_ref set on compute."""
    reference, rest = None, None
    decisions, outputs = [], []
    for call in calls:
        r1 = call.after_first - call.stack_input
        if threshold > 0 and reference is not None:
            rel = ((reference - r1).abs().mean() / reference.abs().mean()).item()
            reuse = rel < threshold
        else:
            reuse = False
        if reuse:
            outputs.append(call.after_first + rest)
        else:
            reference = r1
            rest = call.output - call.after_first
            outputs.append(call.output)
        decisions.append(not reuse)
    return decisions, outputs


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.6])
def test_first_block_cache_equals_reference_rule(threshold: float) -> None:
    calls = scripted_calls(25, seed=14)
    expected_decisions, expected_outputs = reference_first_block(calls, threshold)
    policy = FirstBlockCache(threshold)
    policy.start_section(25)
    runs = []
    outputs = []
    for call in calls:
        stack = FakeStack(call)
        outputs.append(policy.run(stack))
        runs.append(stack.ran)
    assert [r.count("first") for r in runs] == [1] * 25 and not any("all" in r for r in runs)
    assert ["rest" in r for r in runs] == expected_decisions
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected_outputs))
    if threshold in (0.1, 0.3):
        assert True in expected_decisions[1:] and False in expected_decisions


def test_first_block_cache_reuses_only_strictly_below_the_threshold() -> None:
    # Block 0's residual goes from ones to 1.5 * ones: rel = 0.5 exactly.
    x_in = torch.zeros(1, 2, 4)
    calls = [Call(x_in, x_in, x_in + scale, x_in + 7.0) for scale in (1.0, 1.5)]
    for threshold, expected in ((0.5, [True, True]), (0.5000001, [True, False])):
        policy = FirstBlockCache(threshold)
        policy.start_section(2)
        assert run_policy(policy, calls)[0] == expected


class RecordingFirstBlockCache(FirstBlockCache):
    """Keeps the image stream each call hands back to the transformer."""

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        self.outputs: list[torch.Tensor] = []

    def run(self, stack: Any) -> torch.Tensor:
        self.outputs.append(super().run(stack).clone())
        return self.outputs[-1]


def blocks_by_hand(
    model: FramePackTransformer,
    image: torch.Tensor,
    context: torch.Tensor,
    temb: torch.Tensor,
    rope: torch.Tensor,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image stream after block 0, after every block), running the model's blocks one by one."""
    joint, n_img = torch.cat([image, context], dim=1), image.shape[1]
    blocks = [*model.double_blocks, *model.single_blocks]
    blocks[0](joint, n_img, F.silu(temb), rope, mask, Scratch())
    after_first = joint[:, :n_img].clone()
    for block in blocks[1:]:
        block(joint, n_img, F.silu(temb), rope, mask, Scratch())
    return after_first, joint[:, :n_img].clone()


def test_first_block_cache_on_the_transformer_reuses_the_residual_after_block_0() -> None:
    model = FramePackTransformer(TransformerConfig.preset("tiny")).eval().requires_grad_(False)
    randomise_(model, 3)
    inputs = make_inputs(1, [5], seed=2)
    cond, context = conditioning_and_context(inputs)
    prepared = model.prepare(cond, context, inputs["latents"].shape)
    policy = RecordingFirstBlockCache(threshold=1e9)  # every call after the first reuses
    policy.start_section(2)
    stacks: list[tuple[Any, ...]] = []  # each call's block-stack arguments
    real_stack = transformer_module.TransformerStack

    def keep(*args: Any) -> Any:
        stacks.append(args)
        return real_stack(*args)

    with mock.patch.object(transformer_module, "TransformerStack", side_effect=keep):
        model.denoise(inputs["latents"], inputs["timestep"], prepared, cache=policy)
        model.denoise(inputs["latents"] * 0.7, torch.tensor([600.0]), prepared, cache=policy)
    assert policy.stats[-1].computed == {"positive": [0]} and policy.stats[-1].skipped == {"positive": [1]}

    first_0, out_0 = blocks_by_hand(*stacks[0][:6])  # (model, streams, temb, rope, mask): not the float16 guard
    first_1, _ = blocks_by_hand(*stacks[1][:6])
    residual = out_0 - first_0  # what blocks 1.. added on the computed call
    assert residual.abs().max() > 0.1
    assert torch.allclose(policy.outputs[0], out_0, rtol=1e-5, atol=1e-5)
    assert torch.allclose(policy.outputs[1], first_1 + residual, rtol=1e-5, atol=1e-5)


# --- spec parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, kind, value",
    [
        ("none", NoCache, None),
        ("teacache", TeaCache, 0.15),
        ("TeaCache:0.1", TeaCache, 0.1),
        ("magcache", MagCache, 0.1),
        (" magcache : 0.15 ", MagCache, 0.15),
        ("fbcache:0.05", FirstBlockCache, 0.05),
        ("fbcache", FirstBlockCache, 0.06),
    ],
)
def test_parse_cache_spec(spec: str, kind: type, value: float | None) -> None:
    policy = parse_cache_spec(spec)
    assert type(policy) is kind
    if kind is TeaCache:
        assert policy.rel_l1_thresh == value
    elif kind is not NoCache:
        assert policy.threshold == value


def test_parse_cache_spec_picks_the_f1_table() -> None:
    assert parse_cache_spec("magcache-f1:0.15").ratios == FRAMEPACK_F1_25
    assert parse_cache_spec("magcache").ratios == FRAMEPACK_I2V_25


@pytest.mark.parametrize("spec", ["", "foo", "teacache:abc", "teacache:-1", "magcache:nan", "none:0.1", "fbcache:"])
def test_parse_cache_spec_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_cache_spec(spec)
