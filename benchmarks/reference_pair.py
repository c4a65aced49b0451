"""The medium transformer twice, with the same random weights: diffusers' port of the original
model, and ours loaded from the checkpoint diffusers saved (the real loading path)."""

from __future__ import annotations

import tempfile

from framepack.models.transformer import FramePackTransformer, TransformerConfig


def medium_pair(seed: int = 0) -> tuple[object, FramePackTransformer, TransformerConfig]:
    """(diffusers ``HunyuanVideoFramepackTransformer3DModel``, ours, the config), both in eval mode."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from tests.transformer_support import randomise_

    config = TransformerConfig.preset("medium")
    fields = {k: v for k, v in config.to_dict().items() if k != "fp32_output_head"}
    reference = HunyuanVideoFramepackTransformer3DModel(**fields).eval()
    randomise_(reference, seed)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours = FramePackTransformer.from_pretrained(folder)
    return reference, ours, config
