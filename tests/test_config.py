from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from framepack.cache import FirstBlockCache, NoCache, TeaCache
from framepack.config import GenerationConfig
from framepack.errors import ConfigError
from framepack.pipeline import check_inputs
from framepack.sampling.settings import SamplingSettings


def test_defaults_are_the_reference_app() -> None:
    c = GenerationConfig()
    assert (c.seconds, c.fps, c.window, c.steps, c.seed) == (5.0, 30, 9, 25, 31337)
    assert (c.mode, c.variant, c.shift, c.resolution, c.resize) == ("inverted", "bh1", None, 640, "crop")
    assert (c.real_cfg, c.distilled_cfg, c.cfg_rescale, c.crf) == (1.0, 10.0, 0.0, 16)
    assert c.cache is None and c.vae_tiling is None


def test_valid_non_defaults() -> None:
    c = GenerationConfig(
        seconds=1,
        mode="forward",
        variant="bh2",
        shift=3.0,
        resolution=32,
        resize="pad",
        cache=NoCache(),
        cfg_rescale=1.0,
        vae_tiling=True,
        crf=0,
    )
    assert c.mode == "forward"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seconds", -1.0, "seconds: expected a number > 0, got -1.0"),
        ("seconds", float("nan"), "seconds: expected a finite number, got nan"),
        ("steps", 0, "steps: expected an int >= 1, got 0"),
        ("steps", 2.5, "steps: expected an int, got 2.5"),
        ("window", 0, "window: expected an int >= 1, got 0"),
        ("fps", True, "fps: expected an int, got True"),
        ("resolution", 600, "resolution: expected a multiple of 16, got 600"),
        ("resolution", 16, "resolution: expected an int >= 32, got 16"),
        ("mode", "backward", "mode: expected one of inverted, forward, got 'backward'"),
        ("resize", "fill", "resize: expected one of crop, stretch, pad, got 'fill'"),
        ("variant", "bh3", "variant: expected one of bh1, bh2, got 'bh3'"),
        ("cfg_rescale", 1.5, "cfg_rescale: expected a number in [0, 1], got 1.5"),
        ("real_cfg", 0.0, "real_cfg: expected a number > 0, got 0.0"),
        ("shift", -2.0, "shift: expected a number > 0, got -2.0"),
        ("crf", 52, "crf: expected an int in [0, 51] (x264's range), got 52"),
        ("cache", "teacache:x", "cache 'teacache:x': threshold 'x' is not a number"),
        ("cache", "tea", "cache 'tea': unknown policy 'tea'"),
        (
            "cache",
            0.15,
            "cache: expected a spec such as 'teacache:0.15', a CachePolicy (class, factory or instance) or None, got float",
        ),
        ("end_embed_mode", "mean", "end_embed_mode: expected one of weighted_average, linear, disabled, got 'mean'"),
        ("vae_tiling", "yes", "vae_tiling: expected True, False or None, got 'yes'"),
        ("seed", 2**64, "seed: expected an int below 2**64"),
        ("steps", 1001, "steps: expected an int in [1, 1000], got 1001"),
        ("window", 34, "window: expected an int in [1, 33] latent frames, got 34"),
        ("resolution", 2064, "resolution: expected an int in [32, 2048], got 2064"),
        ("seconds", 1e9, "seconds: expected a video of at most 27000 latent frames (3599.9 s at 30 fps), got 1e+09 s"),
    ],
)
def test_impossible_values_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GenerationConfig(**{field: value})
    assert str(caught.value).startswith(message)


def test_the_sampling_part_is_sampling_settings_without_the_pipeline_options() -> None:
    config = GenerationConfig(seconds=1, steps=3, seed=7, resolution=64, crf=0, cache="teacache:0.2")
    sampling = config.sampling
    assert type(sampling) is SamplingSettings and sampling.sampling is sampling
    assert (sampling.seconds, sampling.steps, sampling.seed, sampling.cache) == (1, 3, 7, "teacache:0.2")
    assert not hasattr(sampling, "resolution") and not hasattr(sampling, "crf")
    assert {f.name for f in fields(SamplingSettings)} < {f.name for f in fields(GenerationConfig)}


@pytest.mark.parametrize(
    "cache, expected",
    [
        (None, type(None)),
        ("none", NoCache),
        ("teacache:0.2", TeaCache),
        (TeaCache, TeaCache),  # a class is a factory
        (lambda: FirstBlockCache(0.1), FirstBlockCache),
        (TeaCache(0.2), TeaCache),  # an instance is a template
    ],
)
def test_every_run_gets_a_fresh_policy_from_any_form_of_cache(cache: object, expected: type) -> None:
    settings = SamplingSettings(cache=cache)
    first, second = settings.new_cache_policy(), settings.new_cache_policy()
    assert isinstance(first, expected) and isinstance(second, expected)
    if first is not None:
        assert first is not second and first is not cache and first.stats == [] and first._branches == {}


def test_a_factory_that_builds_no_policy_is_refused_when_a_run_asks_for_one() -> None:
    with pytest.raises(ConfigError, match="returned str, expected a CachePolicy"):
        SamplingSettings(cache=lambda: "teacache").new_cache_policy()


def test_end_image_and_negative_prompt_are_inputs_not_settings() -> None:
    names = {f.name for f in fields(GenerationConfig)}
    assert not names & {"end_image", "negative_prompt", "image", "prompt"}
    with pytest.raises(ConfigError, match="end_image: only the 'inverted' mode"):
        check_inputs(GenerationConfig(mode="forward"), end_image="last.png")
    with pytest.raises(ConfigError, match="negative_prompt: expected a str"):
        check_inputs(GenerationConfig(), negative_prompt=3)  # type: ignore[arg-type]


REPOSITORY = Path(__file__).resolve().parents[1]


def test_the_config_does_not_load_the_mp4_writer() -> None:
    """Settings know x264's crf range without PyAV: importing them loads no video encoder."""
    code = "import sys, framepack.config; print('av' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPOSITORY)
    assert done.stdout.strip() == "False"
