"""How far fp8 weights move the transformer's output: block-scaled fp8 stays within a stated
bound of the float32 model and ahead of unscaled fp8 (a plain cast, as kijai's files are).

A plain cast has no scale to adapt to the weights' size: its loss grows as weights fall below
e4m3's smallest normal (2^-6), where its steps are a fixed 2^-9. So the tiny model's block
weights are drawn at the real model's size, std 1/sqrt(real fan-in), the real model being 96x
wider (3072 vs 32) with the same MLP ratio: 0.018 for q/k/v, 0.009 for the MLP outputs.
Errors are measured against what the blocks add to the output (the output of the model minus
that of a copy whose blocks add nothing: modulation zero, so every gate is zero), since at
these sizes the blocks are a small part of the output.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from framepack.models import fp8
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_

REAL_WIDENING = 96  # 3072 / 32
BOUND = 0.006  # block-scaled (block 16) error / the blocks' contribution; measured 0.003-0.004
# Measured: unscaled is 1.6x-2.8x the block-scaled error at the output (seeds 0-2), and
# 2.5x-2.8x at the weights with the MLP outputs' real fan-in (12288, 15360), 1.4x at 3072.


def real_size_model(seed: int) -> FramePackTransformer:
    model = FramePackTransformer(TransformerConfig.preset("tiny")).eval().requires_grad_(False)
    randomise_(model, seed)  # std 1/sqrt(fan_in)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if model.fp8_quantizable(f"{name}.weight"):
                layer.weight.mul_(1 / math.sqrt(REAL_WIDENING))
    return model


def unscaled_copy(model: FramePackTransformer) -> FramePackTransformer:
    unscaled = copy.deepcopy(model)
    for name, layer in unscaled.named_modules():
        if unscaled.fp8_quantizable(f"{name}.weight"):
            layer.weight = nn.Parameter(layer.weight.to(torch.float8_e4m3fn), requires_grad=False)
    return unscaled


@pytest.mark.parametrize("seed", [0, 1])
def test_block_scaled_fp8_is_within_bound_and_ahead_of_unscaled(seed: int) -> None:
    model = real_size_model(seed)
    inputs = make_inputs(1, [6], seed=seed + 10)
    cond, context = conditioning_and_context(inputs)

    def run(m: FramePackTransformer) -> torch.Tensor:
        return m(inputs["latents"], inputs["timestep"], cond, context)

    reference = run(model)
    without_blocks = copy.deepcopy(model)
    for block in without_blocks.streamable_blocks():
        block.modulation.weight.zero_()
        block.modulation.bias.zero_()
    contribution = (reference - run(without_blocks)).norm()
    assert contribution > 0.05 * reference.norm()

    scaled = copy.deepcopy(model)
    scaled.quantize_fp8(block=16)
    scaled_error = float((run(scaled) - reference).norm() / contribution)
    unscaled_error = float((run(unscaled_copy(model)) - reference).norm() / contribution)
    assert 0 < scaled_error <= BOUND
    assert unscaled_error >= 1.5 * scaled_error


def test_at_the_mlp_outputs_real_size_unscaled_fp8_loses_more_than_twice_as_much() -> None:
    g = torch.Generator().manual_seed(0)
    for fan_in in (12288, 15360):  # the real double blocks' fc_out and single blocks' proj_out
        w = torch.randn(64, fan_in, generator=g) / math.sqrt(fan_in)
        scaled = fp8.dequantize(*fp8.quantize(w, block=64), torch.float32)
        unscaled = w.to(torch.float8_e4m3fn).float()
        scaled_error, unscaled_error = (scaled - w).norm() / w.norm(), (unscaled - w).norm() / w.norm()
        assert scaled_error <= 2.0**-5  # within e4m3's rounding (half a step of 2^-3 on average)
        assert unscaled_error >= 2 * scaled_error
