"""Run-time LoRAs: one denoising step with 0, 1 and 3 LoRAs applied at run time, and fused.

    python -m benchmarks.lora [--repeats 9] [--rank 32] [--device cpu] [--dtype float32]

The "medium" transformer (inner dim 512, 2 double + 4 single blocks; random weights) on
the inputs of benchmarks/transformer_step.py: a 9-frame window with the full packed
context, 729 image tokens, a 512-token text with 80 valid. Each LoRA puts a rank-``rank``
pair on every Linear of both block kinds (the attention, MLP and modulation layers),
as a musubi-tuner file names them. A fifth model runs the 3 LoRAs one pair at a time
(two matmuls, a temporary and an add per pair: the application before ``LoraPairs``
stacked a layer's downs into one matmul). The models run interleaved, one step each per
round. The overhead per LoRA is (r_k - 1) / k, r_k the median over rounds of
t_k / t_0 within a round; the fused model (3 LoRAs merged into the weights) should
cost what no LoRA costs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

from framepack.conditioning import Conditioning, PackedContext
from framepack.models.linear import LoraPairs
from framepack.models.transformer import FramePackTransformer, PreparedInputs, TransformerConfig
from tests.transformer_support import randomise_

DOUBLE_LAYERS = {  # diffusers layer -> (in, out) as multiples of (inner dim, mlp dim)
    "attn.to_q": ("d", "d"),
    "attn.to_k": ("d", "d"),
    "attn.to_v": ("d", "d"),
    "attn.add_q_proj": ("d", "d"),
    "attn.add_k_proj": ("d", "d"),
    "attn.add_v_proj": ("d", "d"),
    "attn.to_out.0": ("d", "d"),
    "attn.to_add_out": ("d", "d"),
    "ff.net.0.proj": ("d", "m"),
    "ff.net.2": ("m", "d"),
    "ff_context.net.0.proj": ("d", "m"),
    "ff_context.net.2": ("m", "d"),
    "norm1.linear": ("d", "6d"),
    "norm1_context.linear": ("d", "6d"),
}
SINGLE_LAYERS = {
    "attn.to_q": ("d", "d"),
    "attn.to_k": ("d", "d"),
    "attn.to_v": ("d", "d"),
    "proj_mlp": ("d", "m"),
    "proj_out": ("d+m", "d"),
    "norm.linear": ("d", "3d"),
}


def lora_state_dict(config: TransformerConfig, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A musubi-style LoRA with a pair on every Linear of every double and single block."""
    d, m = config.inner_dim, config.mlp_dim
    size = {"d": d, "m": m, "6d": 6 * d, "3d": 3 * d, "d+m": d + m}
    g = torch.Generator().manual_seed(seed)
    layers = [(f"transformer_blocks.{n}.{k}", v) for n in range(config.num_layers) for k, v in DOUBLE_LAYERS.items()]
    layers += [
        (f"single_transformer_blocks.{n}.{k}", v)
        for n in range(config.num_single_layers)
        for k, v in SINGLE_LAYERS.items()
    ]
    tensors = {}
    for name, (fan_in, fan_out) in layers:
        key = "lora_unet_" + name.replace(".", "_")
        tensors[key + ".lora_down.weight"] = torch.randn(rank, size[fan_in], generator=g) / size[fan_in] ** 0.5
        tensors[key + ".lora_up.weight"] = torch.randn(size[fan_out], rank, generator=g) * 0.01
        tensors[key + ".alpha"] = torch.tensor(float(rank))
    return tensors


def per_pair_add_to(pairs: LoraPairs, out: torch.Tensor, x: torch.Tensor) -> None:
    """``LoraPairs.add_to`` one pair at a time, as first written: the comparison for the stacked one."""
    for placement, down, up in pairs.pairs():
        factor = pairs.strengths[placement.adapter]  # up holds the pair's scale
        if factor:
            out[..., placement.rows].add_(F.linear(F.linear(x, down), up), alpha=factor)


def lora_flop_fraction(config: TransformerConfig, rank: int) -> float:
    """FLOPs one LoRA adds per token (r * (in + out) per pair) over those of the block Linears
    it adapts (in * out), the modulations aside (one row per call): the arithmetic part of the overhead."""
    d, m = config.inner_dim, config.mlp_dim
    size = {"d": d, "m": m, "d+m": d + m}
    base = extra = 0
    for table, blocks in ((DOUBLE_LAYERS, config.num_layers), (SINGLE_LAYERS, config.num_single_layers)):
        for fan_in, fan_out in (v for k, v in table.items() if not k.startswith("norm")):
            base += blocks * size[fan_in] * size[fan_out]
            extra += blocks * rank * (size[fan_in] + size[fan_out])
    return extra / base


def medium_inputs(
    config: TransformerConfig, height: int, width: int
) -> tuple[torch.Tensor, Conditioning, PackedContext]:
    """benchmarks/transformer_step.py's inputs: the last inverted section's packed context."""
    g = torch.Generator().manual_seed(1)
    w = 9
    latents = torch.randn(1, 16, w, height, width, generator=g)
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[:, :80] = True
    text = torch.randn(1, 512, config.text_embed_dim, generator=g) * mask[..., None]
    pooled = torch.randn(1, config.pooled_projection_dim, generator=g)
    image = torch.randn(1, 729, config.image_proj_dim, generator=g)
    indices = torch.arange(0, 1 + w + 1 + 2 + 16)[None]
    pre, latent, post, two, four = indices.split([1, w, 1, 2, 16], dim=1)
    clean = torch.randn(1, 16, 2, height, width, generator=g)
    clean_2x = torch.randn(1, 16, 2, height, width, generator=g)
    clean_4x = torch.randn(1, 16, 16, height, width, generator=g)
    cond = Conditioning(text, mask, pooled, torch.tensor([10.0]), image)
    context = PackedContext(latent, clean, torch.cat([pre, post], 1), clean_2x, two, clean_4x, four)
    return latents, cond, context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    torch.manual_seed(0)
    config = TransformerConfig.preset("medium")
    with torch.device("cpu"):
        base = FramePackTransformer(config).eval()
    randomise_(base, 0)
    base = base.to(dtype)
    if config.fp32_output_head:
        base.proj_out.float()
    loras = [lora_state_dict(config, args.rank, seed) for seed in (1, 2, 3)]
    models: dict[str, FramePackTransformer] = {"0 LoRAs": base}
    for count in (1, 3):
        model = copy.deepcopy(base)
        for i, tensors in enumerate(loras[:count]):
            model.add_lora(tensors, strength=0.8, name=f"lora{i}")
        models[f"{count} LoRA{'s' if count > 1 else ''}"] = model
    # The application before LoraPairs stacked the downs: per pair, two matmuls, a temporary and an add.
    unstacked = copy.deepcopy(base)
    for i, tensors in enumerate(loras):
        unstacked.add_lora(tensors, strength=0.8, name=f"lora{i}")
    for module in unstacked.modules():
        if isinstance(module, LoraPairs):
            module.add_to = types.MethodType(per_pair_add_to, module)
    models["3 per-pair"] = unstacked
    fused = copy.deepcopy(base)
    for i, tensors in enumerate(loras):
        fused.add_lora(tensors, strength=0.8, name=f"lora{i}")
    fused.fuse_loras()
    models["3 fused"] = fused
    for model in models.values():
        model.to(device)

    latents, cond, context = medium_inputs(config, args.height, args.width)
    timestep = torch.tensor([875.0])
    steps: dict[str, Callable[[], torch.Tensor]] = {}
    with torch.no_grad():
        for label, model in models.items():
            prepared: PreparedInputs = model.prepare(cond, context, latents.shape)
            steps[label] = lambda model=model, prepared=prepared: model.denoise(latents, timestep, prepared)
        outputs = {label: step() for label, step in steps.items()}  # warm-up, and a check of the fused model
        reference = outputs["3 LoRAs"].float()
        fused_error = (outputs["3 fused"].float() - reference).abs().max().item() / reference.abs().max().item()
        times: dict[str, list[float]] = {label: [] for label in steps}
        for _ in range(args.repeats):
            for label, step in steps.items():
                times[label].append(timed(step, device))

    print(
        f"config medium: inner dim {config.inner_dim}, {config.num_layers} double + {config.num_single_layers} single "
        f"blocks; rank {args.rank} on every block Linear; {device} {args.dtype}; threads {torch.get_num_threads()}"
    )
    # Per round, each model's time over the LoRA-free model's in that round (seconds apart, so a
    # shared machine's load mostly cancels), then the median over rounds; absolute medians beside.
    t0s = times["0 LoRAs"]
    print(f"median of {args.repeats} rounds (overhead: median of the per-round ratios to 0 LoRAs):")
    for label, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, t0s))
        count = int(label[0])
        per = f"  overhead per LoRA {(ratio - 1) / count:+.1%}" if count and "fused" not in label else ""
        print(f"  {label:>10}: {statistics.median(t) * 1e3:8.1f} ms  x{ratio:.3f}{per}")
    print(f"fused vs 3 run-time LoRAs: max relative difference {fused_error:.1e}")
    print(
        f"arithmetic: one rank-{args.rank} LoRA adds {lora_flop_fraction(config, args.rank):.1%} to the block Linears' "
        f"FLOPs here; {lora_flop_fraction(TransformerConfig(), args.rank):.1%} in the real model (inner dim 3072)"
    )


def timed(step: Callable[[], torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
