"""One full section (25 UniPC steps) of the medium transformer: our sampler vs the reference's way.

Ours: the section's step-invariant inputs prepared once, then ``sample_unipc`` over the
``GuidedDenoiser`` (framepack.sampling). Reference: what the original demo does, a plain
loop calling the transformer with the full inputs on every step and a straightforward
tensor transcription of the reference UniPC, once with our transformer's ``forward`` and
once with diffusers' port of the original model (same weights, loaded from one checkpoint).
Same noise, no caching on any side, CPU float32. Runs interleaved; prints medians, the time
ratios (target <= 0.8), the kernel floor of our section (benchmarks/kernel_floor.py: its
matmuls and attentions alone, timed in place, so the best ratio any arrangement of this arithmetic could
reach), the share of our wall time spent outside the transformer (target <= 3%), and the
largest difference between the results.

    python -m benchmarks.section [--repeats 5] [--latent 16] [--steps 25]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from framepack.conditioning import Conditioning, PackedContext
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.guidance import GuidedDenoiser
from framepack.sampling.schedule import flux_sigmas, sequence_length
from framepack.sampling.sections import SectionHistory, plan_sections
from framepack.sampling.unipc import sample_unipc

from .kernel_floor import kernel_seconds_in_place
from .reference_pair import medium_pair


class TimedTransformer:
    """Forwards prepare/denoise to the transformer and adds up the seconds spent in them."""

    def __init__(self, transformer: FramePackTransformer) -> None:
        self.transformer = transformer
        self.seconds = 0.0

    def parameters(self) -> Any:
        return self.transformer.parameters()

    def _timed(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.transformer.prepare, *args, **kwargs)

    def denoise(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.transformer.denoise, *args, **kwargs)


def reference_unipc(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """Flow-matching UniPC bh1 as the reference writes it: float32 tensor coefficients (diffusers_helper/k_diffusion/uni_pc_fm.py)."""
    order = min(3, len(sigmas) - 2)
    models: list[torch.Tensor] = []
    ts: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t = sigmas[i].expand(x.shape[0])
        if i == 0:
            models, ts = [model(x, t)], [t]
        else:
            k = i if i < order else order
            lam_s = -torch.log(ts[-1])
            h = -torch.log(t) - lam_s
            rks, d1s = [], []
            for j in range(1, k):
                rk = ((-torch.log(ts[-(j + 1)]) - lam_s) / h)[0]
                rks.append(rk)
                d1s.append((models[-(j + 1)] - models[-1]) / rk)
            rks.append(torch.tensor(1.0))
            rks_t = torch.stack(rks)
            hh = -h[0]
            h_phi_1 = torch.expm1(hh)
            h_phi_k = h_phi_1 / hh - 1
            factorial = 1
            rows, b = [], []
            for n in range(1, k + 1):
                rows.append(torch.pow(rks_t, n - 1))
                b.append(h_phi_k * factorial / hh)
                factorial *= n + 1
                h_phi_k = h_phi_k / hh - 1 / factorial
            r_mat, b_vec = torch.stack(rows), torch.stack(b)
            rhos_c = torch.tensor([0.5]) if k == 1 else torch.linalg.solve(r_mat, b_vec)
            x_first = (t / ts[-1])[0] * x - h_phi_1 * models[-1]
            x_pred = x_first
            if d1s:
                stacked = torch.stack(d1s, dim=1)
                rhos_p = torch.tensor([0.5]) if k == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
                x_pred = x_first - hh * torch.tensordot(stacked, rhos_p, dims=([1], [0]))
            m_t = model(x_pred, t)
            corr = torch.tensordot(stacked, rhos_c[:-1], dims=([1], [0])) if d1s else 0
            x = x_first - hh * (corr + rhos_c[-1] * (m_t - models[-1]))
            models.append(m_t)
            ts.append(t)
        models, ts = models[-order:], ts[-order:]
    return models[-1]


def build_inputs(
    config: TransformerConfig, latent: int, window: int, text_tokens: int, image_tokens: int
) -> tuple[Conditioning, PackedContext, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    valid = text_tokens * 2 // 3
    conditioning = Conditioning(
        text_embeds=torch.randn(1, text_tokens, config.text_embed_dim, generator=g),
        text_mask=torch.arange(text_tokens)[None] < valid,
        pooled=torch.randn(1, config.pooled_projection_dim, generator=g),
        guidance=torch.tensor([10.0]),
        image_embeds=torch.randn(1, image_tokens, config.image_proj_dim, generator=g),
    )
    # A middle section of the default inverted plan, with a history of one random section.
    plan = plan_sections(5.0, window=window, mode="inverted")
    history = SectionHistory("inverted", torch.randn(1, 16, 1, latent, latent, generator=g))
    history.add(plan.sections[0], torch.randn(1, 16, window, latent, latent, generator=g))
    context = history.context(plan.sections[1])
    noise = torch.randn(1, 16, window, latent, latent, generator=g)
    return conditioning, context, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--latent", type=int, default=16, help="latent height = width (pixels / 8)")
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--text-tokens", type=int, default=96)
    parser.add_argument("--image-tokens", type=int, default=729)
    args = parser.parse_args()

    torch.manual_seed(0)
    original, transformer, config = medium_pair()
    conditioning, context, noise = build_inputs(config, args.latent, args.window, args.text_tokens, args.image_tokens)
    pixels = args.latent * 8
    sigmas = flux_sigmas(args.steps, sequence_length(4 * args.window - 3, pixels, pixels))
    timed = TimedTransformer(transformer)

    def ours() -> torch.Tensor:
        prepared = timed.prepare(conditioning, context, tuple(noise.shape))
        return sample_unipc(GuidedDenoiser(timed, prepared), noise.clone(), sigmas)

    def reference() -> torch.Tensor:
        def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            velocity = transformer(x, sigma * 1000.0, conditioning, context).float()
            return x - velocity * sigma.view(-1, 1, 1, 1, 1)

        return reference_unipc(model, noise.clone(), sigmas)

    def original_app() -> torch.Tensor:
        def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            velocity = original(**diffusers_inputs(x, sigma * 1000.0, conditioning, context), return_dict=False)[0]
            return x - velocity.float() * sigma.view(-1, 1, 1, 1, 1)

        return reference_unipc(model, noise.clone(), sigmas)

    ours_times, reference_times, original_times, outside_shares = [], [], [], []
    with torch.inference_mode():
        ours_out, reference_out, original_out = ours(), reference(), original_app()  # warm-up
        for _ in range(args.repeats):
            timed.seconds = 0.0
            started = time.perf_counter()
            ours()
            ours_times.append(time.perf_counter() - started)
            outside_shares.append(1.0 - timed.seconds / ours_times[-1])
            started = time.perf_counter()
            reference()
            reference_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            original_app()
            original_times.append(time.perf_counter() - started)
    floor = kernel_seconds_in_place(ours, repeats=1)

    ours_median, reference_median = statistics.median(ours_times), statistics.median(reference_times)
    original_median = statistics.median(original_times)
    difference = max((ours_out - reference_out).abs().max().item(), (ours_out - original_out).abs().max().item())
    scale = max(1.0, reference_out.abs().max().item())
    print(
        f"section: medium transformer, latents {list(noise.shape)}, {args.steps} steps, CPU float32, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"  ours                                   {ours_median * 1000:9.1f} ms")
    print(f"  reference loop, our transformer        {reference_median * 1000:9.1f} ms")
    print(f"  reference loop, diffusers' transformer {original_median * 1000:9.1f} ms")
    print(
        f"  time ratio ours/reference loop: {ours_median / reference_median:.3f} with our transformer, "
        f"{ours_median / original_median:.3f} with diffusers' (target <= 0.8)"
    )
    print(
        f"  kernel floor of our section (its matmuls and attentions alone): {floor * 1000:.1f} ms; "
        f"best reachable ratio with this arithmetic: {floor / original_median:.3f} against diffusers' loop"
    )
    print(f"  wall time outside the transformer: {100 * statistics.median(outside_shares):.2f}% (target <= 3%)")
    print(f"  max |ours - references| = {difference:.3e} ({difference / scale:.1e} of max(1, |reference|))")


def diffusers_inputs(
    x: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning, context: PackedContext
) -> dict[str, torch.Tensor | None]:
    """The diffusers port's arguments: one 1-D index vector per group, guidance as 1000 x scale."""
    return dict(
        hidden_states=x, timestep=timestep, encoder_hidden_states=conditioning.text_embeds,
        encoder_attention_mask=conditioning.text_mask, pooled_projections=conditioning.pooled,
        image_embeds=conditioning.image_embeds, indices_latents=context.latent_indices[0],
        guidance=conditioning.guidance * 1000.0, latents_clean=context.clean, indices_latents_clean=context.clean_indices[0],
        latents_history_2x=context.clean_2x, indices_latents_history_2x=context.clean_2x_indices[0],
        latents_history_4x=context.clean_4x, indices_latents_history_4x=context.clean_4x_indices[0],
    )  # fmt: skip


if __name__ == "__main__":
    main()
