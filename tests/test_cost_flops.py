"""The cost model's transformer, VAE and encoder FLOPs equal the FLOPs of the kernels a real call runs.

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
from framepack.components import tiny_configs
from framepack.cost.flops import CallShape, Flops, call_flops, prepare_flops
from framepack.cost.vae_flops import (
    decode_tile_frames,
    decode_tiles_flops,
    image_encoder_flops,
    text_encoders_flops,
    vae_encode_flops,
)
from framepack.models.clip import CLIPTextEncoder
from framepack.models.llama import LlamaTextEncoder
from framepack.models.siglip import SiglipImageEncoder
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.models.vae import HunyuanVideoVAE, VAEConfig
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


def recorded(fn) -> tuple[int, int, int]:
    """(matmul FLOPs, attention FLOPs, kernels) of a real call; batched matmuls (an SDPA that
    fell back to its math path) count as attention."""
    calls = record_kernels(fn)
    matmul = attention = 0
    for call in calls:
        if call.op in (aten.bmm.default, aten.baddbmm.default):
            a, b = [x.shape for x in call.args if hasattr(x, "shape")][-2:]
            attention += 2 * a[0] * a[1] * a[2] * b[2]
        else:
            m, a = kernel_flops(call)
            matmul, attention = matmul + m, attention + a
    return matmul, attention, len(calls)


@pytest.mark.parametrize(("latent_frames", "height", "width"), [(1, 3, 5), (6, 4, 3), (9, 2, 2)])
def test_vae_decode_flops_equal_the_recorded_kernels(latent_frames, height, width) -> None:
    """6 and 9 latent frames decode in temporal tiles (of 5, 3 and 5, 5, 3 frames)."""
    config = VAEConfig.preset("tiny")
    vae = HunyuanVideoVAE(config).eval()
    z = torch.randn(1, config.latent_channels, latent_frames, height, width)
    tiles = decode_tiles_flops(config, latent_frames, height, width, tiled=False)
    assert [frames for frames, _ in tiles] == {1: [1], 6: [5, 3], 9: [5, 5, 3]}[latent_frames]
    count = sum((flops for _, flops in tiles), Flops())
    assert (count.matmul, count.attention, count.kernels) == recorded(lambda: list(vae.decode_frames(z)))


def test_vae_tiles_are_the_ones_decode_runs() -> None:
    """A tile starts every 3 latent frames and covers 5 (4 + the one it restarts from), cut at the end."""
    assert decode_tile_frames(VAEConfig.preset("tiny"), 9) == [5, 5, 3]
    assert decode_tile_frames(VAEConfig.preset("tiny"), 6) == [5, 3]
    assert decode_tile_frames(VAEConfig.preset("tiny"), 4) == [4]
    assert decode_tile_frames(VAEConfig.preset("tiny"), 11) == [5, 5, 5, 2]


@pytest.mark.parametrize(("height", "width"), [(16, 24), (40, 8)])
def test_vae_encode_flops_equal_the_recorded_kernels(height, width) -> None:
    """40 x 8: an odd 5 rows after the first stride-2 conv, which then rounds up."""
    config = VAEConfig.preset("tiny")
    vae = HunyuanVideoVAE(config).eval()
    x = torch.randn(1, config.in_channels, 1, height, width)
    count = vae_encode_flops(config, height, width)
    assert (count.matmul, count.attention, count.kernels) == recorded(lambda: vae.encode(x))


def test_encoder_flops_equal_the_recorded_kernels() -> None:
    configs = tiny_configs()
    llama, clip, siglip = configs["text_encoder"], configs["text_encoder_2"], configs["image_encoder"]
    llama_model, clip_model = LlamaTextEncoder(llama).eval(), CLIPTextEncoder(clip).eval()
    siglip_model = SiglipImageEncoder(siglip).eval()
    ids = torch.randint(0, 100, (1, 11))
    clip_ids = torch.randint(0, 100, (1, clip.max_position_embeddings))

    def text() -> None:
        with torch.no_grad():
            llama_model(ids)
            clip_model(clip_ids)

    count = text_encoders_flops(llama, clip, 11)
    assert (count.matmul, count.attention, count.kernels) == recorded(text)
    pixels = torch.randn(1, 3, siglip.image_size, siglip.image_size)
    count = image_encoder_flops(siglip)
    with torch.no_grad():
        assert (count.matmul, count.attention, count.kernels) == recorded(lambda: siglip_model(pixels))
