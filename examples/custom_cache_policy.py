"""Write your own step-cache policy by subclassing ``CachePolicy``.

``SkipAlternateMiddleSteps`` computes the first and last steps of every section and, in
between, runs the block stack only on every other step, reusing the stored residual on the
others. It needs no indicator, so it decides from the step index alone; a policy that wants
to measure something sets ``needs_modulated_input`` or ``decides_after_first_block`` and
reads ``step.modulated_input`` / ``step.first_block_residual``.

Run: ``python examples/custom_cache_policy.py`` (offline; tiny random transformer).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from framepack.cache import CachePolicy, CacheStep, NoCache


class SkipAlternateMiddleSteps(CachePolicy):
    """Compute the first ``warmup`` and last ``cooldown`` fractions of a section; skip every other step between."""

    def __init__(self, warmup: float = 0.2, cooldown: float = 0.1) -> None:
        super().__init__()
        self.warmup = warmup
        self.cooldown = cooldown

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        first_middle = math.ceil(self.warmup * step.num_steps)
        first_tail = step.num_steps - math.ceil(self.cooldown * step.num_steps)
        if step.step < first_middle or step.step >= first_tail:
            return True
        return (step.step - first_middle) % 2 == 0


def sample_section(model: Any, prepared: Any, noise: torch.Tensor, policy: CachePolicy, steps: int) -> torch.Tensor:
    """One section of plain Euler flow matching from sigma 1 to 0, every call through ``policy``."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    policy.start_section(steps)
    x = noise
    for i in range(steps):
        timestep = torch.full((x.shape[0],), 1000.0 * sigmas[i].item())
        velocity = model.denoise(x, timestep, prepared, cache=policy, branch="positive")
        x = x + (sigmas[i + 1] - sigmas[i]) * velocity
    return x


def main() -> None:
    from framepack.conditioning import Conditioning, PackedContext
    from framepack.models.transformer import FramePackTransformer, TransformerConfig

    torch.manual_seed(0)
    config = TransformerConfig.preset("tiny")
    model = FramePackTransformer(config).eval()
    batch, frames, height, width = 1, 3, 8, 8
    cond = Conditioning(
        text_embeds=torch.randn(batch, 7, config.text_embed_dim),
        text_mask=torch.ones(batch, 7, dtype=torch.bool),
        pooled=torch.randn(batch, config.pooled_projection_dim),
        guidance=torch.full((batch,), 10.0),
        image_embeds=torch.randn(batch, 5, config.image_proj_dim),
    )
    ctx = PackedContext(
        latent_indices=torch.arange(1, 1 + frames).unsqueeze(0),
        clean=torch.randn(batch, config.in_channels, 2, height, width),
        clean_indices=torch.tensor([[0, 1 + frames]]),
    )
    shape = (batch, config.in_channels, frames, height, width)
    prepared = model.prepare(cond, ctx, shape)
    noise = torch.randn(shape)

    steps = 25
    with torch.no_grad():
        reference = sample_section(model, prepared, noise, NoCache(), steps)
        policy = SkipAlternateMiddleSteps()
        cached = sample_section(model, prepared, noise, policy, steps)
    stats = policy.stats[-1]
    distance = ((cached - reference).norm() / reference.norm()).item()
    print(f"computed steps {stats.computed['positive']}")
    print(f"skipped steps  {stats.skipped['positive']}")
    print(f"{stats.skipped_count}/{steps} skipped; relative L2 distance to no cache: {distance:.4f}")


if __name__ == "__main__":
    main()
