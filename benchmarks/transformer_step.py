"""One denoising step: FramePackTransformer, eager and compiled, vs diffusers' HunyuanVideoFramepackTransformer3DModel.

    python -m benchmarks.transformer_step                 # CPU, float32
    python -m benchmarks.transformer_step --device cuda   # bfloat16 on the GPU

CPU, float32 (or ``--device cuda``, bfloat16: the same columns), the "medium" config (inner dim 512, 2 double + 4 single blocks) with random
weights saved by diffusers and loaded by our from_pretrained, a 9-frame window with the
full packed context (1x, 2x, 4x), 729 image tokens and a 512-token text with 80 valid.
Both models run on the same inputs, interleaved; medians of the timed repeats. The kernel
floor (benchmarks/kernel_floor.py) is the time of each step's matmuls and attentions alone,
timed in place: what the step would take if everything around them were free. The same
kernels replayed on fresh inputs are printed too (a second view, no floor where caches matter).

Our step is ``denoise`` on inputs ``prepare`` built once per section (clean-latent
embeddings, RoPE tables, image projection, text projection): that work is outside the
timed step on purpose, because a sampler pays it once per section and not per step.
diffusers recomputes it on every call.

The compiled column is the same model after ``FramePackTransformer.compile()`` (one graph per
block kind, token counts dynamic); ``--static`` adds a column compiled for these shapes only.
The compile time is the first compiled call's, less a compiled step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from framepack.conditioning import Conditioning, PackedContext
from framepack.models.compiled import CompiledBlocks
from framepack.models.transformer import TransformerConfig

from .kernel_floor import kernel_floor_seconds, kernel_seconds_in_place, record_kernels
from .reference_pair import medium_pair


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    """Seconds ``fn`` takes; ``sync`` waits for the device (a GPU runs asynchronously)."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def step_flops(config: TransformerConfig, n_img: int, n_noisy: int, n_ctx: int, n_text: int) -> float:
    """Matmul + attention FLOPs of one denoising call (2 per multiply-add)."""
    d, m = config.inner_dim, config.mlp_dim
    out = config.patch_size_t * config.patch_size**2 * config.out_channels
    n = n_img + n_ctx
    flops = 2 * n_noisy * config.in_channels * config.patch_size_t * config.patch_size**2 * d  # patch_embed
    flops += (
        config.num_refiner_layers * n_text * (2 * 4 * d * d + 2 * 2 * d * m)
        + config.num_refiner_layers * 4 * n_text**2 * d
    )
    double = n * (2 * 3 * d * d + 2 * d * d + 2 * 2 * d * m) + 4 * n * n * d
    single = n * (2 * d * (3 * d + m) + 2 * (d + m) * d) + 4 * n * n * d
    flops += config.num_layers * double + config.num_single_layers * single
    flops += 2 * n_noisy * d * out
    return float(flops)


def matmul_rate(
    size: int = 1024,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sync: Callable[[], None] = lambda: None,
) -> float:
    a = torch.randn(2 * size, size, device=device, dtype=dtype)
    b = torch.randn(size, 2 * size, device=device, dtype=dtype)
    torch.mm(a, b)
    seconds = statistics.median(timed(lambda: torch.mm(a, b), sync) for _ in range(repeats))
    return 2 * (2 * size) * size * (2 * size) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--device", default="cpu", help="cpu (float32) or cuda (bfloat16)")
    parser.add_argument("--static", action="store_true", help="also time the blocks compiled for these shapes only")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    reference, ours, config = medium_pair()
    if device.type != "cpu":  # bfloat16 on the GPU: the float32 output head too, as diffusers' whole model
        reference.to(device=device, dtype=dtype)
        ours.to(device=device, dtype=dtype)

    g = torch.Generator().manual_seed(1)
    w, h, wd = 9, args.height, args.width
    latents = torch.randn(1, 16, w, h, wd, generator=g)
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[:, :80] = True
    text = torch.randn(1, 512, config.text_embed_dim, generator=g) * mask[..., None]
    pooled = torch.randn(1, config.pooled_projection_dim, generator=g)
    image = torch.randn(1, 729, config.image_proj_dim, generator=g)
    indices = torch.arange(0, 1 + w + 1 + 2 + 16, device=device)[
        None
    ]  # last inverted section: [0 | window | post | 2x | 4x]
    pre, latent, post, two, four = indices.split([1, w, 1, 2, 16], dim=1)
    clean = torch.randn(1, 16, 2, h, wd, generator=g)
    clean_2x = torch.randn(1, 16, 2, h, wd, generator=g)
    clean_4x = torch.randn(1, 16, 16, h, wd, generator=g)
    latents, text, pooled, image, clean, clean_2x, clean_4x, mask = (
        t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        for t in (latents, text, pooled, image, clean, clean_2x, clean_4x, mask)
    )
    timestep = torch.tensor([875.0], device=device)
    cond = Conditioning(text, mask, pooled, torch.tensor([10.0], device=device), image)
    context = PackedContext(latent, clean, torch.cat([pre, post], 1), clean_2x, two, clean_4x, four)

    with torch.no_grad():
        prepared = ours.prepare(cond, context, latents.shape)
        eager_blocks, compiled_blocks = None, ours.compile()
        variants = {"compiled": compiled_blocks}
        if args.static:
            variants["compiled, static shapes"] = ours.compile(dynamic=False)

        def run_ours(blocks: CompiledBlocks | None = None) -> torch.Tensor:
            ours.compiled_blocks = blocks
            return ours.denoise(latents, timestep, prepared)

        def run_reference() -> torch.Tensor:
            return reference(
                hidden_states=latents,
                timestep=timestep,
                encoder_hidden_states=text,
                encoder_attention_mask=mask,
                pooled_projections=pooled,
                image_embeds=image,
                indices_latents=latent[0],
                guidance=torch.tensor([10000.0], device=device),
                latents_clean=clean,
                indices_latents_clean=torch.cat([pre, post], 1)[0],
                latents_history_2x=clean_2x,
                indices_latents_history_2x=two[0],
                latents_history_4x=clean_4x,
                indices_latents_history_4x=four[0],
                return_dict=False,
            )[0]

        expected, got = run_reference(), run_ours(eager_blocks)  # warm-up, and a parity check on these inputs
        error = relative_error(got, expected)
        first_call = {name: timed(lambda b=blocks: run_ours(b), sync) for name, blocks in variants.items()}
        compiled_error = {name: relative_error(run_ours(blocks), got) for name, blocks in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in ["diffusers", "ours", *variants]}
        floors: dict[str, list[float]] = {"ours": [], "diffusers": []}
        rates = []
        for _ in range(args.repeats):  # the floors too, in the same rounds: this machine's speed drifts by tens of %
            times["diffusers"].append(timed(run_reference, sync))
            times["ours"].append(timed(lambda: run_ours(eager_blocks), sync))
            for name, blocks in variants.items():
                times[name].append(timed(lambda b=blocks: run_ours(b), sync))
            floors["ours"].append(kernel_seconds_in_place(lambda: run_ours(eager_blocks), 1, sync))
            floors["diffusers"].append(kernel_seconds_in_place(run_reference, 1, sync))
            rates.append(matmul_rate(device=device, dtype=dtype, sync=sync))
        floor_ours, floor_reference = (statistics.median(floors[name]) for name in ("ours", "diffusers"))
        replayed_ours = kernel_floor_seconds(record_kernels(lambda: run_ours(eager_blocks)), args.repeats)

    n_noisy = prepared.noisy_tokens
    n_img = prepared.rope.shape[1]
    n_ctx = 729 + 80
    flops = step_flops(config, n_img, n_noisy, n_ctx, 80)
    median = {name: statistics.median(values) for name, values in times.items()}
    t_ours, t_ref, mm = median["ours"], median["diffusers"], statistics.median(rates)
    print(
        f"config medium: inner dim {config.inner_dim}, {config.num_layers} double + {config.num_single_layers} single blocks"
    )
    print(
        f"device {device}, {dtype}; tokens: {n_img} image-stream ({n_noisy} noisy) + {n_ctx} context = "
        f"{n_img + n_ctx}; threads {torch.get_num_threads()}"
    )
    print(f"max relative error ours vs diffusers: {error:.2e}")
    for name in variants:
        print(f"max relative error {name} vs ours eager: {compiled_error[name]:.2e}")
    print(f"step medians of {args.repeats}, interleaved (ours: prepare() done once, outside the step):")
    for name, seconds in median.items():
        print(
            f"  {name + ':':26s}{seconds * 1e3:8.1f} ms   {seconds / t_ref:.3f} x diffusers   "
            f"{seconds / floor_ours:.3f} x ours' kernel floor   (per round: {paired_ratio(times[name], floors['ours'])})"
        )
    print(f"  {'kernel floor (ours):':26s}{floor_ours * 1e3:8.1f} ms   {floor_ours / t_ref:.3f} x diffusers")
    print(f"  {'kernel floor (diffusers):':26s}{floor_reference * 1e3:8.1f} ms")
    print(f"  {'our kernels, replayed:':26s}{replayed_ours * 1e3:8.1f} ms   (fresh inputs, cold caches: no floor)")
    for name in variants:
        print(f"compile time, {name}: {first_call[name] - median[name]:.1f} s (first call {first_call[name]:.1f} s)")
    print(f"step FLOPs (matmul + attention): {flops / 1e9:.2f} GFLOP; torch.mm rate: {mm / 1e9:.1f} GFLOP/s")
    print(
        f"share of the matmul rate: ours {flops / t_ours / mm:.1%}, compiled {flops / median['compiled'] / mm:.1%}, "
        f"diffusers {flops / t_ref / mm:.1%}"
    )
    print(
        f"work around the kernels: ours {(t_ours - floor_ours) * 1e3:.0f} ms, compiled "
        f"{(median['compiled'] - floor_ours) * 1e3:.0f} ms, diffusers {(t_ref - floor_reference) * 1e3:.0f} ms"
    )


def paired_ratio(seconds: list[float], floors: list[float]) -> str:
    """The median and range of each round's time over the same round's floor: the machine's drift cancels."""
    ratios = sorted(t / f for t, f in zip(seconds, floors, strict=True))
    return f"median {statistics.median(ratios):.3f} x floor, {ratios[0]:.3f}-{ratios[-1]:.3f}"


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return (got.float() - expected.float()).abs().max().item() / max(1.0, expected.float().abs().max().item())


if __name__ == "__main__":
    main()
