"""The real FramePackI2V_HY config.json builds the model with the real checkpoint's tensor and parameter counts."""

from __future__ import annotations

import torch

from framepack.models.transformer import FramePackTransformer, TransformerConfig

# config.json of lllyasviel/FramePackI2V_HY (kijai's copy of it).
REAL_CONFIG = {
    "_class_name": "HunyuanVideoTransformer3DModelPacked",
    "_diffusers_version": "0.33.0.dev0",
    "_name_or_path": "hunyuanvideo-community/HunyuanVideo",
    "attention_head_dim": 128,
    "guidance_embeds": True,
    "has_clean_x_embedder": True,
    "has_image_proj": True,
    "image_proj_dim": 1152,
    "in_channels": 16,
    "mlp_ratio": 4.0,
    "num_attention_heads": 24,
    "num_layers": 20,
    "num_refiner_layers": 2,
    "num_single_layers": 40,
    "out_channels": 16,
    "patch_size": 2,
    "patch_size_t": 1,
    "pooled_projection_dim": 768,
    "qk_norm": "rms_norm",
    "rope_axes_dim": [16, 56, 56],
    "rope_theta": 256.0,
    "text_embed_dim": 4096,
}


def test_real_config_is_the_framepack_preset_with_the_checkpoints_tensor_and_parameter_counts() -> None:
    config = TransformerConfig.from_dict(REAL_CONFIG)
    assert config == TransformerConfig.preset("framepack")
    with torch.device("meta"):
        model = FramePackTransformer(config)
    keys = [k for sources in model.checkpoint_layout(set()).values() for k in sources]
    assert len(keys) == len(set(keys)) == 1274
    assert sum(p.numel() for p in model.parameters()) == 12_874_314_816
    assert model.num_blocks == 60
