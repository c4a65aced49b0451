"""fp8 weights: how far they move the transformer's output, and how many bytes they save.

    python benchmarks/fp8_error.py        (from the repository root; about three minutes on two CPU cores)

Output error: the "medium" transformer (512 wide, 2 double + 4 single blocks) with random
weights, its block Linears (modulation aside) stored in e4m3fn with one scale per block of 64
input columns, per output channel, per tensor, or none (a plain cast), against the same model
in float32. Two weight sizes: the random init, std 1/sqrt(fan_in), and the real model's sizes
(std 1/sqrt(real fan_in), the real model being 6x wider), where a plain cast loses more (its
steps are fixed below 2^-6). Errors are relative L2, of the output and of what the blocks add
to it (output minus that of a copy whose blocks add nothing).

Bytes: the blocks' weights in bf16 and in block-scaled fp8, for the medium model and for the
real-size config (built on the meta device: shapes only).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from framepack.models import fp8
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.units import format_bytes
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_

KINDS = {"block 64": "block", "per channel": "channel", "per tensor": "tensor", "none (plain cast)": "none"}


def medium(seed: int, shrink: float) -> FramePackTransformer:
    config = TransformerConfig.preset("medium", text_embed_dim=32, pooled_projection_dim=16, image_proj_dim=24)
    model = FramePackTransformer(config).eval().requires_grad_(False)
    randomise_(model, seed)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if model.fp8_quantizable(f"{name}.weight"):
                layer.weight.mul_(shrink)
    return model


def quantized(model: FramePackTransformer, per: str) -> FramePackTransformer:
    out = copy.deepcopy(model)
    for name, layer in out.named_modules():
        if out.fp8_quantizable(f"{name}.weight"):
            weight, scale = fp8.quantize(layer.weight, block=64, per=per)
            layer.weight = nn.Parameter(weight, requires_grad=False)
            layer.weight_scale = scale
    return out


def errors(seed: int, shrink: float) -> dict[str, tuple[float, float]]:
    model = medium(seed, shrink)
    inputs = make_inputs(1, [6], seed=seed + 10)
    cond, context = conditioning_and_context(inputs)

    def run(m: FramePackTransformer) -> torch.Tensor:
        return m(inputs["latents"], inputs["timestep"], cond, context)

    reference = run(model)
    silent = copy.deepcopy(model)
    for block in silent.streamable_blocks():
        block.modulation.weight.zero_()
        block.modulation.bias.zero_()
    contribution = (reference - run(silent)).norm()
    out = {}
    for label, per in KINDS.items():
        diff = (run(quantized(model, per)) - reference).norm()
        out[label] = (float(diff / reference.norm()), float(diff / contribution))
    return out


def block_bytes(config: TransformerConfig) -> tuple[int, int]:
    """(bf16, block-scaled fp8) bytes of the blocks' tensors, as the streamer packs them."""
    with torch.device("meta"):
        model = FramePackTransformer(config).to(torch.bfloat16)
    dense = sum(model.streaming_sizes().block_bytes)
    model.quantize_fp8(block=64)
    return dense, sum(model.streaming_sizes().block_bytes)


def main() -> None:
    torch.set_grad_enabled(False)
    seeds = (0, 1, 2)
    for title, shrink in (("random init", 1.0), ("real model's weight sizes", 1 / math.sqrt(6))):
        print(f"\nrelative L2 error vs float32, medium transformer, {title} (mean of seeds {seeds}):")
        print(f"  {'scale':<20}{'of the output':>16}{'of the blocks part':>22}")
        runs = [errors(seed, shrink) for seed in seeds]
        for label in KINDS:
            whole = sum(r[label][0] for r in runs) / len(runs)
            part = sum(r[label][1] for r in runs) / len(runs)
            print(f"  {label:<20}{whole:>16.5f}{part:>22.5f}")
    print("\nblock weights (streamed bytes), bf16 vs fp8 with a scale per 64 input columns:")
    for name in ("medium", "framepack"):
        dense, narrow = block_bytes(TransformerConfig.preset(name))
        print(
            f"  {name:<10} bf16 {format_bytes(dense):>10}   fp8 {format_bytes(narrow):>10}   ratio {narrow / dense:.3f}"
        )


if __name__ == "__main__":
    main()
