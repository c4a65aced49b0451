"""float16 weights (GPUs without bfloat16): float32 islands keep the result close to float32,
a residual stream past float16's range stays finite, and a real overflow raises
NumericalError naming the block instead of producing black frames.

Tolerance for float16 vs float32 on the tiny model: max abs error <= 5e-3 * max(1, max|float32|)
(float16 keeps 11 significant bits, ~5e-4 relative per rounding; measured ~6e-4 here).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from framepack.cache import FirstBlockCache
from framepack.errors import NumericalError
from framepack.models.transformer import FramePackTransformer
from framepack.precision import FiniteGuard
from tests.transformer_support import build_diffusers_model, conditioning_and_context, make_inputs

FP16_TOLERANCE = 5e-3
FLOAT16_MAX = 65504.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_transformer_fp16")
    build_diffusers_model(path, seed=2)
    return path


def run(model: FramePackTransformer, inputs: dict) -> torch.Tensor:
    cond, context = conditioning_and_context(inputs)
    return model(inputs["latents"], inputs["timestep"], cond, context)


def as_float16(model: FramePackTransformer) -> FramePackTransformer:
    """What from_pretrained(dtype=float16) makes of these weights: float16, proj_out float32."""
    half = copy.deepcopy(model).half()
    half.proj_out.float()
    return half


def assert_close_to_float32(got: torch.Tensor, expected: torch.Tensor) -> None:
    error = (got - expected).abs().max().item()
    assert error <= FP16_TOLERANCE * max(1.0, expected.abs().max().item()), f"max abs error {error}"


@pytest.mark.parametrize(("batch", "lengths"), [(1, [5]), (2, [9, 3])])
def test_float16_matches_float32(folder: Path, batch: int, lengths: list[int]) -> None:
    full = FramePackTransformer.from_pretrained(folder)
    half = FramePackTransformer.from_pretrained(folder, dtype=torch.float16)
    assert half.patch_embed.proj.weight.dtype == torch.float16 and half.proj_out.weight.dtype == torch.float32
    assert half.residual_dtype == torch.float32
    inputs = make_inputs(batch, lengths, seed=6)
    expected, got = run(full, inputs), run(half, inputs)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert_close_to_float32(got, expected)


def test_stream_past_float16_range_stays_finite(folder: Path) -> None:
    full = FramePackTransformer.from_pretrained(folder)
    # Single block 0's attention/MLP gate ~ 3e4 (rows 2D:3D of its modulation): every float16 tensor
    # stays in range, but gate x update pushes the residual stream past 65504.
    dim = full.config.inner_dim
    with torch.no_grad():
        full.single_blocks[0].modulation.bias[2 * dim : 3 * dim] += 3e4
    half = as_float16(full)
    peaks: list[torch.Tensor] = []
    half.single_blocks[0].register_forward_hook(lambda m, a, out: peaks.append(out.abs().max()))
    inputs = make_inputs(1, [5], seed=6)
    got = run(half, inputs)
    assert peaks[0] > FLOAT16_MAX and torch.isfinite(peaks[0])  # the float32 stream holds it
    assert torch.isfinite(got).all()
    assert_close_to_float32(got, run(full, inputs))


def test_overflow_raises_naming_the_block(folder: Path) -> None:
    full = FramePackTransformer.from_pretrained(folder)
    with torch.no_grad():  # weights ~1e4 still fit float16; their matmul output does not
        full.single_blocks[1].proj_out.weight.mul_(1e5)
    half = as_float16(full)
    assert torch.isfinite(half.single_blocks[1].proj_out.weight).all()
    inputs = make_inputs(1, [5], seed=6)
    assert torch.isfinite(run(full, inputs)).all()  # float32 copes: the overflow is float16's
    with pytest.raises(NumericalError, match=r"^single_blocks\.1 output \(float16 weights: .*\): \d+ inf"):
        run(half, inputs)


def test_float16_overflow_in_a_double_block_is_named(folder: Path) -> None:
    half = as_float16(FramePackTransformer.from_pretrained(folder))
    with torch.no_grad():
        half.double_blocks[1].image_mlp.fc_out.weight.mul_(3e4)  # ~3e3 per weight: the MLP output overflows
    with pytest.raises(NumericalError, match=r"^double_blocks\.1 output"):
        run(half, make_inputs(1, [5], seed=6))


def test_the_first_overflowing_block_is_named_after_one_read_per_call(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read = FiniteGuard.read
    monkeypatch.setattr(FiniteGuard, "read", lambda guard: (reads.append(1), read(guard))[1])
    half = as_float16(FramePackTransformer.from_pretrained(folder))
    inputs = make_inputs(1, [5], seed=6)
    cond, context = conditioning_and_context(inputs)
    prepared = half.prepare(cond, context, inputs["latents"].shape)
    policy = FirstBlockCache(threshold=1e9)  # block 0, then the rest (computed) or the stored residual (reused)
    policy.start_section(2)
    for timestep in (900.0, 800.0):
        assert torch.isfinite(half.denoise(inputs["latents"], torch.tensor([timestep]), prepared, cache=policy)).all()
    assert policy.stats[-1].skipped == {"positive": [1]}
    assert len(reads) == 2  # one per call, not one per block (the model has 4) plus the refiner's

    with torch.no_grad():  # two blocks overflow: the error names the first, though both ran
        half.double_blocks[1].image_mlp.fc_out.weight.mul_(3e4)
        half.single_blocks[1].proj_out.weight.mul_(1e5)
    reads.clear()
    with pytest.raises(NumericalError, match=r"^double_blocks\.1 output \(float16 weights: .*\): \d+ inf and \d+ NaN"):
        half.denoise(inputs["latents"], inputs["timestep"], prepared)
    assert len(reads) == 1
