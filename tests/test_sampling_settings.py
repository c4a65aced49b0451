"""The sampling settings on their own: no video or image library, one cache given once, branches
kept by the guidance wrapper (the transformer takes no branch)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framepack import FramePackPipeline, GenerationConfig
from framepack.cache import FirstBlockCache, TeaCache
from framepack.cli import demo_image
from framepack.errors import ConfigError
from framepack.models.transformer import FramePackTransformer
from framepack.sampling.loop import generate_latents, stream_latents
from framepack.sampling.settings import SamplingSettings

REPO = Path(__file__).resolve().parents[1]

NO_VIDEO_LIBRARIES = """
import sys
import torch
from framepack.conditioning import Conditioning
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.loop import generate_latents
from framepack.sampling.settings import SamplingSettings

config = TransformerConfig.preset("tiny")
model = FramePackTransformer(config).eval().requires_grad_(False)
conditioning = Conditioning(
    text_embeds=torch.randn(1, 4, config.text_embed_dim), text_mask=torch.ones(1, 4, dtype=torch.bool),
    pooled=torch.randn(1, config.pooled_projection_dim), guidance=torch.tensor([10.0]),
    image_embeds=torch.randn(1, 3, config.image_proj_dim),
)
settings = SamplingSettings(seconds=0.4, window=3, steps=2, cache="teacache:0.15")
latents = generate_latents(model, conditioning, torch.zeros(1, 16, 1, 4, 4), settings)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("av", "PIL") or m.startswith("framepack.video")
                or m in ("framepack.config", "framepack.pipeline"))
print(list(latents.shape), loaded)
"""


def test_generate_latents_with_sampling_settings_imports_no_video_or_image_library() -> None:
    done = subprocess.run([sys.executable, "-c", NO_VIDEO_LIBRARIES], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 16, 4, 4, 4] []"


def test_the_transformer_takes_no_branch() -> None:
    for method in (FramePackTransformer.forward, FramePackTransformer.denoise):
        assert "branch" not in inspect.signature(method).parameters
        assert "cache" in inspect.signature(method).parameters


def test_the_loop_takes_the_cache_only_from_the_settings() -> None:
    for function in (stream_latents, generate_latents):
        assert "cache" not in inspect.signature(function).parameters


def test_the_loop_refuses_something_that_is_no_settings() -> None:
    with pytest.raises(ConfigError, match="config: expected SamplingSettings or a GenerationConfig, got dict"):
        generate_latents(None, None, None, {"steps": 3})  # type: ignore[arg-type]


# Saved by the code before the transformer lost its ``branch`` argument (a policy's state was
# then keyed by ``forward(branch=)``): real CFG 3 through the tiny pipeline, two sections of
# 6 steps, with each policy. The first-block cache decides differently in the two branches.
REFERENCE = REPO / "tests" / "data" / "cfg_cache_reference.safetensors"
CFG = dict(window=3, steps=6, resolution=64, seconds=0.8, real_cfg=3.0)
DECISIONS = {
    "teacache": [
        ({"positive": [0, 4, 5], "negative": [0, 4, 5]}, {"positive": [1, 2, 3], "negative": [1, 2, 3]}),
        ({"positive": [0, 4, 5], "negative": [0, 4, 5]}, {"positive": [1, 2, 3], "negative": [1, 2, 3]}),
    ],
    "fbcache": [
        ({"positive": [0, 1, 2, 3, 4, 5], "negative": [0, 1, 2, 3, 5]}, {"negative": [4]}),
        ({"positive": [0, 1, 2, 3, 5], "negative": [0, 1, 2, 3, 5]}, {"positive": [4], "negative": [4]}),
    ],
}


@pytest.mark.parametrize(
    "name, cache", [("teacache", TeaCache(0.3)), ("fbcache", FirstBlockCache(0.2)), ("none", None)]
)
def test_real_cfg_with_a_cache_keeps_each_branchs_residuals_as_before(name: str, cache: object) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    config = GenerationConfig(cache=cache, **CFG)
    inputs = pipe.encode(demo_image(64), "a dancer", config, negative_prompt="blurry")
    sections = list(
        stream_latents(
            pipe.components.transformer, inputs.conditioning, inputs.start_latent, config, negative=inputs.negative
        )
    )
    assert torch.equal(sections[-1].history, load_file(REFERENCE)[name])
    if cache is not None:
        assert [(s.cache_stats.computed, s.cache_stats.skipped) for s in sections] == DECISIONS[name]


def test_sampling_settings_and_a_generation_config_sample_the_same_video() -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    config = GenerationConfig(window=3, steps=2, resolution=64, seconds=0.8, cache="fbcache:0.2")
    inputs = pipe.encode(demo_image(64), "a dancer", config)
    run = [
        generate_latents(pipe.components.transformer, inputs.conditioning, inputs.start_latent, settings)
        for settings in (config, config.sampling)
    ]
    assert isinstance(config.sampling, SamplingSettings) and torch.equal(run[0], run[1])
