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
