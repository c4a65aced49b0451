"""What a resumed run must share with the run it continues: the weights, and the cache policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cache import NoCache, TeaCache
from framepack.cli import demo_image
from framepack.components import WEIGHT_SAMPLES
from framepack.errors import GenerationCancelled, InputError
from framepack.sampling.loop import Progress

# window 3 at 30 fps: 12 pixel frames a section, so 0.8 s is two sections; 64 px keeps it fast.
FAST = dict(window=3, steps=2, resolution=64, seconds=0.8)
IMAGE = demo_image(64)


def cancel_in_second_section(progress: Progress) -> None:
    if progress.section == 1:
        raise GenerationCancelled("stop")


def cut_run(pipe: FramePackPipeline, config: GenerationConfig, run_dir: Path) -> None:
    """A run of ``config`` stopped after its first section, saved in ``run_dir``."""
    with pytest.raises(GenerationCancelled):
        pipe.generate(IMAGE, "a dancer", config, run_dir=run_dir, callback=cancel_in_second_section)


def test_resume_needs_the_same_weights_not_only_the_same_model(tmp_path: Path) -> None:
    cut_run(FramePackPipeline.tiny(seed=0), GenerationConfig(**FAST), tmp_path / "cut")  # started with no cache
    with pytest.raises(InputError, match=r"settings differ: weights changed$"):
        FramePackPipeline.tiny(seed=1).generate(IMAGE, "a dancer", GenerationConfig(**FAST), resume=tmp_path / "cut")
    # another pipeline object with the same weights continues it, with NoCache() standing for no cache
    config = GenerationConfig(cache=NoCache(), **FAST)
    resumed = FramePackPipeline.tiny(seed=0).generate(IMAGE, "a dancer", config, resume=tmp_path / "cut")
    assert resumed.num_frames == 4 * (2 * 3 + 1) - 3


@pytest.mark.parametrize("component", ["transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder"])
def test_one_changed_weight_element_in_the_sample_changes_the_digest(component: str) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    before = pipe.components.weights_digest()
    name, weight = max(getattr(pipe.components, component).named_parameters(), key=lambda item: item[1].numel())
    assert weight.numel() > WEIGHT_SAMPLES  # a strided sample, not the whole tensor
    stride = -(-weight.numel() // WEIGHT_SAMPLES)
    flat = weight.view(-1)
    kept = flat[5 * stride].item()
    flat[5 * stride] = kept + 1  # the sixth sampled element
    assert pipe.components.weights_digest() != before, name
    flat[5 * stride] = kept
    assert pipe.components.weights_digest() == before


def test_the_digest_covers_buffers_and_names_not_only_values() -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    before = pipe.components.weights_digest()
    pipe.components.vae.register_buffer("extra", torch.zeros(3))
    assert pipe.components.weights_digest() != before


def test_no_cache_and_nocache_have_one_fingerprint() -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    inputs = pipe.encode(IMAGE, "a dancer", GenerationConfig(**FAST))
    fingerprints = [pipe.fingerprint(inputs, "a dancer", GenerationConfig(cache=c, **FAST)) for c in (None, NoCache())]
    assert fingerprints[0] == fingerprints[1] and fingerprints[0]["settings"]["cache"] == "NoCache()"


def test_one_cache_given_as_spec_class_or_template_has_one_fingerprint() -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    inputs = pipe.encode(IMAGE, "a dancer", GenerationConfig(**FAST))
    fingerprints = [
        pipe.fingerprint(inputs, "a dancer", GenerationConfig(cache=c, **FAST))
        for c in ("teacache:0.15", TeaCache, TeaCache(0.15), lambda: TeaCache(0.15))
    ]
    assert all(f == fingerprints[0] for f in fingerprints)
    assert fingerprints[0]["settings"]["cache"] == "TeaCache(rel_l1_thresh=0.15)"
    # the pipeline's output options that do not change the latents are not in it; the negative prompt is
    assert "crf" not in fingerprints[0]["settings"]
    other = pipe.fingerprint(inputs, "a dancer", GenerationConfig(**FAST), negative_prompt="blurry")
    assert other["negative_prompt"] != fingerprints[0]["negative_prompt"]
