"""Step caching on one 25-step section of the medium transformer: skips, speed and drift vs no cache.

For each policy at its default: steps skipped, median section time as a ratio to NoCache
(policies interleaved, median of --repeats after one warm-up round) and the relative L2
distance of the section's final latents to NoCache's. Random weights, so the distance says
how far a policy drifts on this model, not how a video would look.

    python -m benchmarks.cache [--steps 25] [--repeats 5] [--preset medium]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from framepack.cache import CachePolicy, FirstBlockCache, MagCache, NoCache, TeaCache
from framepack.conditioning import Conditioning, PackedContext
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.guidance import GuidedDenoiser
from framepack.sampling.schedule import flux_sigmas
from framepack.sampling.unipc import sample_unipc

POLICIES: dict[str, Callable[[], CachePolicy]] = {
    "none": NoCache,
    "teacache": TeaCache,
    "magcache": MagCache,
    "fbcache": FirstBlockCache,
}


def build_inputs(
    config: TransformerConfig, frames: int, height: int, width: int
) -> tuple[Conditioning, PackedContext, tuple[int, ...]]:
    """Random conditioning and a FramePack-shaped packed context (1x: 2, 2x: 2, 4x: 16 frames)."""
    gen = torch.Generator().manual_seed(0)
    channels = config.in_channels
    cond = Conditioning(
        text_embeds=torch.randn(1, 64, config.text_embed_dim, generator=gen),
        text_mask=torch.ones(1, 64, dtype=torch.bool),
        pooled=torch.randn(1, config.pooled_projection_dim, generator=gen),
        guidance=torch.tensor([10.0]),
        image_embeds=torch.randn(1, 16, config.image_proj_dim, generator=gen),
    )
    after = 1 + frames

    def clean(count: int) -> torch.Tensor:
        return torch.randn(1, channels, count, height, width, generator=gen)

    ctx = PackedContext(
        latent_indices=torch.arange(1, after).unsqueeze(0),
        clean=clean(2),
        clean_indices=torch.tensor([[0, after]]),
        clean_2x=clean(2),
        clean_2x_indices=torch.arange(after + 1, after + 3).unsqueeze(0),
        clean_4x=clean(16),
        clean_4x_indices=torch.arange(after + 3, after + 19).unsqueeze(0),
    )
    return cond, ctx, (1, channels, frames, height, width)


def run_section(model: FramePackTransformer, prepared: object, noise: torch.Tensor, sigmas: torch.Tensor,
                policy: CachePolicy) -> tuple[torch.Tensor, float]:  # fmt: skip
    """One section through ``policy``; returns the final latents and the wall time."""

    denoise = GuidedDenoiser(model, prepared, cache=policy)
    start = time.perf_counter()
    policy.start_section(len(sigmas) - 1)
    with torch.no_grad():
        latents = sample_unipc(denoise, noise, sigmas, variant="bh1")
    return latents, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=9, help="noisy latent frames (FramePack's window is 9)")
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    args = parser.parse_args()

    config = TransformerConfig.preset(args.preset)
    model = FramePackTransformer(config).eval()
    cond, ctx, shape = build_inputs(config, args.frames, args.size, args.size)
    with torch.no_grad():
        prepared = model.prepare(cond, ctx, shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    sigmas = flux_sigmas(args.steps, args.frames * args.size * args.size // 4)

    latents, skipped = {}, {}
    for name, make in POLICIES.items():  # warm-up round; the policies are deterministic, so keep its outputs
        policy = make()
        latents[name], _ = run_section(model, prepared, noise, sigmas, policy)
        skipped[name] = policy.stats[-1].skipped_count
    times: dict[str, list[float]] = {name: [] for name in POLICIES}
    for _ in range(args.repeats):
        for name, make in POLICIES.items():
            times[name].append(run_section(model, prepared, noise, sigmas, make())[1])

    base_time = statistics.median(times["none"])
    reference = latents["none"]
    print(f"preset {args.preset}, {args.steps} steps, latents {list(shape)}, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'policy':<10} {'skipped':>8} {'time':>9} {'vs none':>8} {'rel L2 to none':>15}")
    for name in POLICIES:
        median = statistics.median(times[name])
        distance = ((latents[name] - reference).norm() / reference.norm()).item()
        ratio = median / base_time
        print(f"{name:<10} {skipped[name]:>4}/{args.steps:<3} {median:>8.3f}s {ratio:>7.2f}x {distance:>15.4f}")


if __name__ == "__main__":
    main()
