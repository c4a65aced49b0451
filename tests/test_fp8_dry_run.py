"""The CUDA dry run (framepack/dry_run.py) takes fp8 transformer blocks: a generation on claimed
``cuda`` with fake fp8 weights runs under a budget, and the streamer moves the blocks' fp8 bytes."""

from __future__ import annotations

import numpy as np
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.dry_run import CudaDryRun

CONFIG = GenerationConfig(seconds=0.5, steps=3, resolution=64, window=3, seed=1)


def test_a_pipeline_with_fp8_blocks_generates_in_the_dry_run() -> None:
    with CudaDryRun(total_gib=8, bf16=True) as dry:
        pipe = FramePackPipeline.tiny(seed=0)
        transformer = pipe.components.transformer
        dense_blocks = sum(transformer.streaming_sizes().block_bytes)
        transformer.quantize_fp8(block=32)
        fp8_blocks = sum(transformer.streaming_sizes().block_bytes)
        for model in pipe.components.modules().values():
            dry.fake_weights(model)
        assert transformer.double_blocks[0].image_qkv.weight.dtype == torch.float8_e4m3fn
        pipe.device = torch.device("cuda")
        pipe.set_vram_budget(4.0, resolution=CONFIG.resolution, window=CONFIG.window)
        with dry.pipeline_phases(pipe):
            video = pipe.generate(np.full((64, 64, 3), 100, np.uint8), "a dancer", CONFIG)
    assert video.num_frames > 0
    assert fp8_blocks < 0.8 * dense_blocks  # float32 tiny model: 1 byte + a float32 scale per 32 vs 4 bytes


def test_run_time_loras_on_streamed_fp8_blocks_generate_in_the_dry_run() -> None:
    """A LoRA added after the plan re-plans it; its pairs are placed with their blocks on the claimed device."""
    with CudaDryRun(total_gib=8, bf16=True) as dry:
        pipe = FramePackPipeline.tiny(seed=0)
        transformer = pipe.components.transformer
        transformer.quantize_fp8(block=32)
        for model in pipe.components.modules().values():
            dry.fake_weights(model)
        pipe.device = torch.device("cuda")
        pipe.set_vram_budget(4.0, resolution=CONFIG.resolution, window=CONFIG.window)
        dim = transformer.config.inner_dim
        lora = {
            "lora_unet_single_transformer_blocks_1_proj_out.lora_down.weight": torch.randn(
                4, dim + transformer.config.mlp_dim
            ),
            "lora_unet_single_transformer_blocks_1_proj_out.lora_up.weight": torch.randn(dim, 4),
        }
        pipe.add_lora(lora, 0.5, name="style")
        layer = transformer.single_blocks[1].proj_out
        assert layer.lora is not None and all(t.dtype == layer.compute_dtype for t in layer.lora.buffers())
        with dry.pipeline_phases(pipe):
            video = pipe.generate(np.full((64, 64, 3), 100, np.uint8), "a dancer", CONFIG)
    assert video.num_frames > 0
    assert [(entry.name, entry.strength) for entry in transformer.loras()] == [("style", 0.5)]
