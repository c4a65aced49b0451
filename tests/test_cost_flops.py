"""The cost model's transformer FLOPs equal the FLOPs of the kernels a real call runs.

``benchmarks/kernel_floor.py`` records every matmul, convolution and attention of a call with
their shapes; here each recorded kernel's FLOPs are worked out from those shapes alone and
summed, and the cost model's count (written from the configs, never from a run) must match
to the FLOP. A count that forgot a Linear, doubled an attention, used the wrong token count
for a stream or the wrong padding of a context group would differ.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.kernel_floor import KernelCall, record_kernels
from framepack.cost.flops import CallShape, call_flops, prepare_flops
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.transformer_support import conditioning_and_context, make_inputs

aten = torch.ops.aten
ATTENTION = aten._scaled_dot_product_flash_attention_for_cpu.default


def kernel_flops(call: KernelCall) -> tuple[int, int]:
    """(matmul FLOPs, attention FLOPs) of one recorded kernel, from its shapes."""
    shapes = [a.shape for a in call.args if hasattr(a, "shape")]
    if call.op == ATTENTION:
        q, k = shapes[0], shapes[1]  # [B, H, L, hd]
        return 0, 4 * q[0] * q[1] * q[2] * k[2] * q[3]
    if call.op == aten.convolution.default:
        weight = shapes[1]  # [out, in, kt, kh, kw]
        return 2 * math.prod(call.out.shape) * math.prod(weight[1:]), 0
    if call.op in (aten.addmm.default, aten.addmm.out):
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2 * m * k * n, 0
    if call.op == aten.mm.default:
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2 * m * k * n, 0
    raise AssertionError(f"a kernel the test does not count: {call.op}")


def totals(calls: list[KernelCall]) -> tuple[int, int, int]:
    matmul = sum(kernel_flops(c)[0] for c in calls)
    attention = sum(kernel_flops(c)[1] for c in calls)
    return matmul, attention, len(calls)


@pytest.mark.parametrize(
    ("frames", "height", "width", "text", "with_image", "layers"),
    [
        (3, 10, 14, 7, True, {}),  # 10 x 14: the 2x and 4x groups are padded
        (2, 16, 8, 9, False, {"num_layers": 1, "num_single_layers": 3, "num_refiner_layers": 2}),
    ],
)
def test_transformer_flops_equal_the_recorded_kernels(frames, height, width, text, with_image, layers) -> None:
    config = TransformerConfig.preset("tiny", **layers)
    model = FramePackTransformer(config).eval()
    inputs = make_inputs(1, [text], frames=frames, height=height, width=width, text_len=12, n_image=5)
    conditioning, context = conditioning_and_context(inputs, with_image=with_image)
    latents, timestep = inputs["latents"], inputs["timestep"]
    prepared = None

    def prepare() -> None:
        nonlocal prepared
        prepared = model.prepare(conditioning, context, latents.shape)

    prepare_calls = record_kernels(prepare)
    step_calls = record_kernels(lambda: model.denoise(latents, timestep, prepared))

    shape = CallShape(frames, height, width, text_tokens=text, image_tokens=5 if with_image else 0)
    around, stack = call_flops(config, shape)
    step = around + stack
    assert (step.matmul, step.attention, step.kernels) == totals(step_calls)
    expected_prepare = prepare_flops(config, shape)
    assert (expected_prepare.matmul, expected_prepare.attention, expected_prepare.kernels) == totals(prepare_calls)


def test_stack_is_the_blocks_kernels_alone() -> None:
    """The part a cache skips: the kernels between the first block's first and the last block's last."""
    config = TransformerConfig.preset("tiny")
    model = FramePackTransformer(config).eval()
    inputs = make_inputs(1, [7])
    conditioning, context = conditioning_and_context(inputs)
    prepared = model.prepare(conditioning, context, inputs["latents"].shape)
    shape = CallShape(3, 10, 14, text_tokens=7, image_tokens=5)
    _, stack = call_flops(config, shape)

    blocks = [*model.double_blocks, *model.single_blocks]
    # 10 kernels per double block, 4 per single one: the stack is the calls before the output head's 2
    calls = record_kernels(lambda: model.denoise(inputs["latents"], inputs["timestep"], prepared))
    stack_calls = calls[-2 - stack.kernels : -2]
    assert stack.kernels == 10 * config.num_layers + 4 * config.num_single_layers == 28
    assert len(blocks) == 4
    assert (stack.matmul, stack.attention) == totals(stack_calls)[:2]
