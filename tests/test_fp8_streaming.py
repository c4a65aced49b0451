"""fp8 blocks stream as fp8 bytes (weights and scales travel together) and compute exactly what
the resident fp8 model computes."""

from __future__ import annotations

import copy

import pytest
import torch

from framepack.memory.residency import ALIGNMENT
from framepack.memory.streamer import minimum_budget
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.test_streaming import denoise_steps
from tests.transformer_support import make_inputs, randomise_

BLOCK = 16


@pytest.fixture(scope="module")
def bf16_model() -> FramePackTransformer:
    model = FramePackTransformer(TransformerConfig.preset("tiny", num_layers=2, num_single_layers=3)).eval()
    randomise_(model, 5)
    return model.to(torch.bfloat16).requires_grad_(False)


@pytest.fixture(scope="module")
def fp8_model(bf16_model: FramePackTransformer) -> FramePackTransformer:
    model = copy.deepcopy(bf16_model)
    model.quantize_fp8(block=BLOCK)
    return model


def quantized_weights(model: FramePackTransformer) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, scale) of every block Linear but the modulation: the ones quantize_fp8 stores in fp8."""
    return [
        (m.weight, m.weight_scale)
        for block in model.streamable_blocks()
        for name, m in block.named_modules()
        if hasattr(m, "dense_weight") and not name.endswith("modulation")
    ]


def test_streaming_sizes_count_fp8_bytes(bf16_model: FramePackTransformer, fp8_model: FramePackTransformer) -> None:
    dense, narrow = bf16_model.streaming_sizes(), fp8_model.streaming_sizes()
    assert narrow.fixed_bytes == dense.fixed_bytes  # embedders, refiner, head: not quantized
    for block, dense_bytes, fp8_bytes in zip(bf16_model.streamable_blocks(), dense.block_bytes, narrow.block_bytes):
        # Hand count: each block Linear (modulation aside) loses a byte per weight and gains a bf16 scale per 16.
        saved = 0
        count = 0
        for name, module in block.named_modules():
            if hasattr(module, "dense_weight") and not name.endswith("modulation"):
                saved += module.weight.numel() - 2 * module.weight.numel() // BLOCK
                count += 1
        assert abs((dense_bytes - saved) - fp8_bytes) <= ALIGNMENT * (count + 1)  # packing pads each tensor
    linear_dense = sum(w.nbytes for w, _ in quantized_weights(bf16_model))
    linear_fp8 = sum(w.nbytes + scale.nbytes for w, scale in quantized_weights(fp8_model))
    assert linear_fp8 / linear_dense == pytest.approx((1 + 2 / BLOCK) / 2)  # about half: 0.5625 here


@pytest.mark.parametrize("budget", ["three_blocks", "minimum"])
def test_streamed_fp8_equals_resident_fp8(fp8_model: FramePackTransformer, budget: str) -> None:
    inputs = make_inputs(1, [5], seed=3)
    expected = denoise_steps(fp8_model, inputs, None)
    streamed = copy.deepcopy(fp8_model)
    sizes = list(streamed.streaming_sizes().block_bytes)
    streamer = streamed.enable_streaming(
        "cpu", 3 * max(sizes) if budget == "three_blocks" else minimum_budget(sizes, 1)
    )
    assert streamer.plan.streamed
    got = denoise_steps(streamed, inputs, None)
    assert streamer.stats.passes >= 3
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert streamer.stats.last_pass_transferred_bytes == sum(sizes[i] for i in streamer.plan.streamed)
    assert expected[0].abs().max() > 0
