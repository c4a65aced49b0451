"""One denoising step of a tiny random FramePack transformer, offline.

    python examples/transformer_step.py

Builds the "tiny" config with random weights, lays out a packed context like the first
section of the inverted (anti-drifting) schedule, prepares the step-invariant inputs once
and runs one denoising call.
"""

from __future__ import annotations

import torch

from framepack.conditioning import Conditioning, PackedContext
from framepack.models.transformer import FramePackTransformer, TransformerConfig


def main() -> None:
    torch.manual_seed(0)
    config = TransformerConfig.preset("tiny")
    model = FramePackTransformer(config).eval()

    window, height, width = 3, 16, 16  # latent frames and size of the noisy window
    latents = torch.randn(1, config.in_channels, window, height, width)
    text_mask = torch.zeros(1, 12, dtype=torch.bool)
    text_mask[:, :7] = True
    conditioning = Conditioning(
        text_embeds=torch.randn(1, 12, config.text_embed_dim) * text_mask[..., None],
        text_mask=text_mask,
        pooled=torch.randn(1, config.pooled_projection_dim),
        guidance=torch.tensor([10.0]),
        image_embeds=torch.randn(1, 9, config.image_proj_dim),
    )
    # indices [0 | latent window | post | 2x | 4x] as in the last inverted section
    indices = torch.arange(1 + window + 1 + 2 + 16)[None]
    pre, latent, post, two, four = indices.split([1, window, 1, 2, 16], dim=1)
    context = PackedContext(
        latent_indices=latent,
        clean=torch.randn(1, 16, 2, height, width),
        clean_indices=torch.cat([pre, post], dim=1),
        clean_2x=torch.zeros(1, 16, 2, height, width),
        clean_2x_indices=two,
        clean_4x=torch.zeros(1, 16, 16, height, width),
        clean_4x_indices=four,
    )

    prepared = model.prepare(conditioning, context, latents.shape)
    velocity = model.denoise(latents, torch.tensor([1000.0 * 0.9]), prepared)
    print(f"velocity {tuple(velocity.shape)} {velocity.dtype}, mean |v| = {velocity.abs().mean():.4f}")


if __name__ == "__main__":
    main()
