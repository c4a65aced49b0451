"""One denoising step: FramePackTransformer vs diffusers' HunyuanVideoFramepackTransformer3DModel.

    python -m benchmarks.transformer_step

CPU, float32, the "medium" config (inner dim 512, 2 double + 4 single blocks) with random
weights saved by diffusers and loaded by our from_pretrained, a 9-frame window with the
full packed context (1x, 2x, 4x), 729 image tokens and a 512-token text with 80 valid.
Both models run on the same inputs, interleaved; medians of the timed repeats. The kernel
floor (benchmarks/kernel_floor.py) replays each step's matmuls and attentions alone: the
time the step would take if everything around them were free.

Our step is ``denoise`` on inputs ``prepare`` built once per section (clean-latent
embeddings, RoPE tables, image projection, text projection): that work is outside the
timed step on purpose, because a sampler pays it once per section and not per step.
diffusers recomputes it on every call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from framepack.conditioning import Conditioning, PackedContext
from framepack.models.transformer import TransformerConfig

from .kernel_floor import kernel_floor_seconds, record_kernels
from .reference_pair import medium_pair


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
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


def matmul_rate(size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(2 * size, size), torch.randn(size, 2 * size)
    torch.mm(a, b)
    seconds = statistics.median(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * (2 * size) * size * (2 * size) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=24)
    args = parser.parse_args()

    torch.manual_seed(0)
    reference, ours, config = medium_pair()

    g = torch.Generator().manual_seed(1)
    w, h, wd = 9, args.height, args.width
    latents = torch.randn(1, 16, w, h, wd, generator=g)
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[:, :80] = True
    text = torch.randn(1, 512, config.text_embed_dim, generator=g) * mask[..., None]
    pooled = torch.randn(1, config.pooled_projection_dim, generator=g)
    image = torch.randn(1, 729, config.image_proj_dim, generator=g)
    indices = torch.arange(0, 1 + w + 1 + 2 + 16)[None]  # last inverted section: [0 | window | post | 2x | 4x]
    pre, latent, post, two, four = indices.split([1, w, 1, 2, 16], dim=1)
    clean = torch.randn(1, 16, 2, h, wd, generator=g)
    clean_2x = torch.randn(1, 16, 2, h, wd, generator=g)
    clean_4x = torch.randn(1, 16, 16, h, wd, generator=g)
    timestep = torch.tensor([875.0])
    cond = Conditioning(text, mask, pooled, torch.tensor([10.0]), image)
    context = PackedContext(latent, clean, torch.cat([pre, post], 1), clean_2x, two, clean_4x, four)

    with torch.no_grad():
        prepared = ours.prepare(cond, context, latents.shape)

        def run_ours() -> torch.Tensor:
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
                guidance=torch.tensor([10000.0]),
                latents_clean=clean,
                indices_latents_clean=torch.cat([pre, post], 1)[0],
                latents_history_2x=clean_2x,
                indices_latents_history_2x=two[0],
                latents_history_4x=clean_4x,
                indices_latents_history_4x=four[0],
                return_dict=False,
            )[0]

        expected, got = run_reference(), run_ours()  # warm-up, and a parity check on these inputs
        error = (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())
        ours_times, reference_times, rates = [], [], []
        for _ in range(args.repeats):
            reference_times.append(timed(run_reference))
            ours_times.append(timed(run_ours))
            rates.append(matmul_rate())
        floor_ours = kernel_floor_seconds(record_kernels(run_ours), args.repeats)
        floor_reference = kernel_floor_seconds(record_kernels(run_reference), args.repeats)

    n_noisy = prepared.noisy_tokens
    n_img = prepared.rope.shape[1]
    n_ctx = 729 + 80
    flops = step_flops(config, n_img, n_noisy, n_ctx, 80)
    t_ours, t_ref, mm = statistics.median(ours_times), statistics.median(reference_times), statistics.median(rates)
    print(
        f"config medium: inner dim {config.inner_dim}, {config.num_layers} double + {config.num_single_layers} single blocks"
    )
    print(
        f"tokens: {n_img} image-stream ({n_noisy} noisy) + {n_ctx} context = {n_img + n_ctx}; threads {torch.get_num_threads()}"
    )
    print(f"max relative error ours vs diffusers: {error:.2e}")
    print(f"diffusers step: {t_ref * 1e3:8.1f} ms (median of {args.repeats})")
    print(f"ours step:      {t_ours * 1e3:8.1f} ms (median of {args.repeats}; prepare() done once, outside the step)")
    print(f"ratio ours/diffusers: {t_ours / t_ref:.3f}  ({t_ref / t_ours:.2f}x faster)")
    print(f"step FLOPs (matmul + attention): {flops / 1e9:.2f} GFLOP; torch.mm float32 rate: {mm / 1e9:.1f} GFLOP/s")
    print(f"ours reaches {flops / t_ours / mm:.1%} of the matmul rate; diffusers {flops / t_ref / mm:.1%}")
    print(
        f"kernel floor (matmuls, attention, convolutions alone, replayed): ours {floor_ours * 1e3:.1f} ms, "
        f"diffusers {floor_reference * 1e3:.1f} ms"
    )
    print(
        f"  best ratio reachable with this arithmetic (ours at its floor): {floor_ours / t_ref:.3f}; "
        f"work around the kernels: ours {(t_ours - floor_ours) * 1e3:.0f} ms, diffusers {(t_ref - floor_reference) * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
