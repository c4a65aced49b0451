"""Keyframes and latent strengths through the pipeline and the command: which section's
start-frame slot gets which image, checked against independent encodes of the fitted images."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framepack import FramePackPipeline, GenerationConfig
from framepack.cli import demo_image, main
from framepack.errors import ConfigError, GenerationCancelled, InputError
from framepack.keyframes import check_keyframes, keyframe_coverage, keyframe_section
from framepack.models.vae import HunyuanVideoVAE
from framepack.sampling.loop import Progress
from framepack.sampling.sections import plan_sections
from framepack.video import load_image, resize_image

# window 3 at 30 fps, 1.2 s: three sections and 37 pixel frames (1.2333 s). Section 0 is frames
# 0-12 (the start frame and 4·3 = 12 more), each later one 12 frames: sections start at frames
# 0, 13, 25, i.e. 0, 0.4333, 0.8333 s. 0.8 s is two sections, 25 frames (0.8333 s). 64 px, 1 step
# keep it fast.
THREE = dict(window=3, steps=1, resolution=64, seconds=1.2)
TWO = dict(THREE, seconds=0.8)
START = demo_image(96)  # fitted to 64x64


def noise_image(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


KEY_A = noise_image(1, 120, 80)  # other shapes than the start image: fitted (cropped) to its bucket
KEY_B = noise_image(2, 48, 96)


@pytest.fixture(scope="module")
def pipe() -> FramePackPipeline:
    return FramePackPipeline.tiny(seed=0)


@pytest.fixture(autouse=True)
def grey_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded sections are grey: what is tested here is the sampling's context, and the real
    decode (tests/test_vae.py, tests/test_pipeline.py) would be most of each run's time."""

    def decode(self, latents: torch.Tensor, *, tiling: object = None, out_device: object = None) -> torch.Tensor:
        b, _, t, h, w = latents.shape
        return torch.zeros(b, 3, 4 * (t - 1) + 1, 8 * h, 8 * w, device=out_device or latents.device)

    monkeypatch.setattr(HunyuanVideoVAE, "decode", decode)


def latent_of(pipe: FramePackPipeline, image: np.ndarray) -> torch.Tensor:
    """The scaled VAE latent of ``image`` fitted to 64x64 by centre crop, encoded here on its own."""
    fitted = resize_image(image, 64, 64, "crop")
    pixels = torch.from_numpy(fitted).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1.0
    with torch.no_grad():
        return pipe.components.vae.encode(pixels).float()


def embeds_of(pipe: FramePackPipeline, image: np.ndarray) -> torch.Tensor:
    encoder = pipe.components.image_encoder
    with torch.no_grad():
        return encoder(encoder.preprocess(resize_image(image, 64, 64, "crop")))


def record_prepare(pipe: FramePackPipeline, monkeypatch: pytest.MonkeyPatch) -> list:
    """(conditioning, packed context) of every ``prepare`` call, in generation order."""
    calls = []
    prepare = pipe.components.transformer.prepare

    def recording(conditioning, context, shape):  # type: ignore[no-untyped-def]
        calls.append((conditioning, context))
        return prepare(conditioning, context, shape)

    monkeypatch.setattr(pipe.components.transformer, "prepare", recording)
    return calls


def start_slots(calls: list) -> list[torch.Tensor]:
    return [context.clean[:, :, :1] for _, context in calls]


# --- which section a key names, and which sections a keyframe covers -------------------


def test_int_keys_are_video_sections_and_seconds_fall_in_the_section_shown_then() -> None:
    # 5 s at window 9: 4 sections; section 0 is pixel frames 0-36, each later one 36 frames, so they
    # start at frames 0, 37, 73, 109 (0, 1.2333, 2.4333, 3.6333 s); 145 frames = 4.8333 s < 5 s.
    plan = plan_sections(5.0, mode="inverted")
    # 1.2 s shows frame 36, still section 0's; 3.3 s is in section 2 (at 1.1 s a section, it was 3)
    cases = [(0, 0), (3, 3), (0.0, 0), (1.2, 0), (1.24, 1), (2.43, 1), (2.44, 2), (3.3, 2), (3.64, 3), (4.99, 3)]
    assert [(key, keyframe_section(key, plan)) for key, _ in cases] == cases
    assert [type(key) for key, _ in cases[:3]] == [int, int, float]
    for bad in (4, -1, 5.0, -0.1, math.nan, math.inf, True, "1", None):
        with pytest.raises(ConfigError, match="keyframes"):
            keyframe_section(bad, plan)
    with pytest.raises(ConfigError, match=r"1 and 1.5s both name section 1 \(1.23 s to 2.43 s\)"):
        check_keyframes({1: "a.png", 1.5: "b.png"}, plan)
    with pytest.raises(ConfigError, match="only the 'inverted' mode"):
        check_keyframes({1: "a.png"}, plan_sections(5.0, mode="forward"))
    assert check_keyframes({}, plan_sections(5.0, mode="forward")) == {}
    assert check_keyframes({2.5: "b", 0: "a"}, plan) == {2: 2.5, 0: 0}


def test_a_keyframe_covers_its_section_and_the_earlier_ones_back_to_the_previous_keyframe() -> None:
    # anchors are numbered by section: here 0 is the keyframe of section 1, 1 that of section 3
    assert keyframe_coverage([3, 1], 5) == (0, 0, 1, 1, None)
    assert keyframe_coverage([0], 3) == (0, None, None)
    assert keyframe_coverage([2], 3) == (0, 0, 0)
    assert keyframe_coverage([], 2) == (None, None)


# --- through the tiny pipeline -----------------------------------------------------------


def test_keyframe_latents_stand_in_the_start_slot_of_the_right_sections(pipe, monkeypatch) -> None:
    calls = record_prepare(pipe, monkeypatch)
    # video sections: 0 <- A (its own), 1 <- B (0.5 s is in 0.4333..0.8333 s), 2 <- the start image
    video = pipe.generate(START, "a dancer", GenerationConfig(**THREE), keyframes={0.5: KEY_B, 0: KEY_A})
    start, a, b = latent_of(pipe, START), latent_of(pipe, KEY_A), latent_of(pipe, KEY_B)
    assert not torch.equal(a, b) and not torch.equal(a, start)
    slots = start_slots(calls)  # generation order: video sections 2, 1, 0
    assert [torch.equal(slot, want) for slot, want in zip(slots, (start, b, a))] == [True, True, True]
    start_embeds = embeds_of(pipe, START)
    assert all(torch.equal(conditioning.image_embeds, start_embeds) for conditioning, _ in calls)
    assert torch.equal(video.latents[:, :, :1], start)  # the video still opens on the start image


def test_a_schedule_and_keyframes_together_reach_every_section(pipe, monkeypatch) -> None:
    waves, dances = "a man waves", "he starts to dance"
    config = GenerationConfig(**THREE)
    pooled = {text: pipe.encode(START, text, config).conditioning.pooled for text in (waves, dances)}
    assert not torch.equal(pooled[waves], pooled[dances])
    calls = record_prepare(pipe, monkeypatch)
    # sections start at 0, 0.43, 0.83 s: 0.7 s snaps to section 2, so video sections 0, 1 wave and
    # 2 dances; the keyframe of section 1 stands in sections 0 and 1, the start image in 2
    schedule = f"[0s: {waves}] [0.7s: {dances}]"
    pipe.generate(START, schedule, config, keyframes={1: KEY_A})
    start, a = latent_of(pipe, START), latent_of(pipe, KEY_A)
    assert len(calls) == 3  # one step a section, generation order: video sections 2, 1, 0
    for (conditioning, context), text, slot in zip(calls, (dances, waves, waves), (start, a, a)):
        assert torch.equal(conditioning.pooled, pooled[text]), text
        assert torch.equal(context.clean[:, :, :1], slot)


def test_keyframe_embeds_replace_the_start_images_in_the_covered_sections(pipe, monkeypatch) -> None:
    calls = record_prepare(pipe, monkeypatch)
    config = GenerationConfig(keyframe_embeds=True, **THREE)
    pipe.generate(START, "a dancer", config, keyframes={1: KEY_A})  # video sections 0, 1 <- A; 2 <- start
    start, a = embeds_of(pipe, START), embeds_of(pipe, KEY_A)
    embeds = [conditioning.image_embeds for conditioning, _ in calls]  # video sections 2, 1, 0
    assert [torch.equal(e, want) for e, want in zip(embeds, (start, a, a))] == [True, True, True]
    latent_a = latent_of(pipe, KEY_A)
    assert [torch.equal(slot, latent_a) for slot in start_slots(calls)] == [False, True, True]


def test_end_and_start_strengths_reach_the_context_through_the_pipeline(pipe, monkeypatch) -> None:
    calls = record_prepare(pipe, monkeypatch)
    end = noise_image(3, 64, 64)
    config = GenerationConfig(end_strength=0.5, start_strength=0.8, **THREE)
    pipe.generate(START, "a dancer", config, end_image=end, keyframes={0: KEY_A})
    start, a, end_latent = latent_of(pipe, START), latent_of(pipe, KEY_A), latent_of(pipe, end)
    first = calls[0][1].clean  # video section 2: the start image's slot, then the end frame's 1x slot
    assert torch.equal(first[:, :, :1], start * 0.8) and torch.equal(first[:, :, 1:2], end_latent * 0.5)
    assert torch.equal(calls[1][1].clean[:, :, :1], start * 0.8)  # video section 1: no keyframe of its own after
    assert torch.equal(calls[2][1].clean[:, :, :1], a * 0.8)  # video section 0: the keyframe, scaled too
    assert not torch.equal(calls[1][1].clean[:, :, 1:2], end_latent * 0.5)  # only the first section ends there


def test_refused_keyframes_fail_before_the_run_folder_is_claimed(pipe, tmp_path: Path) -> None:
    cases = [
        (GenerationConfig(mode="forward", **THREE), {0: KEY_A}, "only the 'inverted' mode"),
        (GenerationConfig(**THREE), {3: KEY_A}, r"section 3 is not in the video: its 3 section\(s\) are 0 to 2"),
        (GenerationConfig(**THREE), {1.24: KEY_A}, "1.24s is not in the video: .* up to its length, 1.23333 s"),
        (GenerationConfig(**THREE), {"1": KEY_A}, "expected keys that are a section index"),
        (GenerationConfig(**THREE), [KEY_A], "expected a dict"),
        (GenerationConfig(keyframe_embeds=True, **THREE), {0: KEY_A}, "text-to-video .* has none"),
    ]
    for config, keyframes, message in cases:
        image = None if config.keyframe_embeds else START  # keyframe embeddings without a start image
        with pytest.raises(ConfigError, match=message):
            pipe.stream(image, "a dancer", config, keyframes=keyframes, run_dir=tmp_path / "run")
        assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="keyframe_embeds: .* text-to-video"):
        pipe.generate(None, "a dancer", GenerationConfig(keyframe_embeds=True, **THREE), keyframes={0: KEY_A})
    with pytest.raises(ConfigError, match="keyframe_embeds: expected True or False"):
        GenerationConfig(keyframe_embeds=1)


def test_a_run_without_keyframes_fingerprints_as_before(pipe) -> None:
    inputs = pipe.encode(START, "a dancer", GenerationConfig(**TWO))
    plain = pipe.fingerprint(inputs, "a dancer", GenerationConfig(**TWO))
    assert set(plain) == {
        "model", "weights", "dtype", "vae_tiling", "image", "end_image", "prompt", "negative_prompt", "settings"
    }  # fmt: skip
    assert inputs.control is None
    assert pipe.fingerprint(inputs, "a dancer", GenerationConfig(keyframe_embeds=True, **TWO)) == plain
    empty = pipe.encode(START, "a dancer", GenerationConfig(**TWO), keyframes={})
    assert empty.control is None and pipe.fingerprint(empty, "a dancer", GenerationConfig(**TWO)) == plain


def cancel_in_second_section(progress: Progress) -> None:
    if progress.section == 1:
        raise GenerationCancelled("stop")


def test_resume_refuses_changed_keyframes_and_continues_with_the_same_ones(pipe, tmp_path: Path) -> None:
    config = GenerationConfig(**TWO)
    with pytest.raises(GenerationCancelled):
        pipe.generate(
            START, "a", config, keyframes={1: KEY_A}, run_dir=tmp_path / "cut", callback=cancel_in_second_section
        )
    for keyframes, other, message in [
        ({1: KEY_B}, config, "keyframes changed$"),  # another image
        ({0: KEY_A}, config, "keyframes changed$"),  # the same image at another section
        (None, config, "keyframe_embeds False -> .none.; keyframes changed$"),
        ({1: KEY_A}, GenerationConfig(keyframe_embeds=True, **TWO), "keyframe_embeds False -> True$"),
    ]:
        with pytest.raises(InputError, match=message):
            pipe.generate(START, "a", other, keyframes=keyframes, resume=tmp_path / "cut")
    resumed = pipe.generate(START, "a", config, keyframes={1: KEY_A}, resume=tmp_path / "cut")
    whole = pipe.generate(START, "a", config, keyframes={1: KEY_A})
    assert torch.equal(resumed.latents, whole.latents)


# --- the command -----------------------------------------------------------------------

FAST = ["--tiny", "--seconds", "0.8", "--window", "3", "--steps", "1", "--resolution", "64"]


def save_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def test_keyframe_and_strength_flags_reach_the_run(tmp_path: Path, monkeypatch) -> None:
    given = {}
    stream = FramePackPipeline.stream

    def recording(self, image, prompt, config, **kwargs):  # type: ignore[no-untyped-def]
        given.update(kwargs, config=config)
        return stream(self, image, prompt, config, **kwargs)

    monkeypatch.setattr(FramePackPipeline, "stream", recording)
    odd = save_png(tmp_path / "x:y" / "k=1.png", KEY_A)  # '=' and ':' in the path
    plain = save_png(tmp_path / "b.png", KEY_B)
    end = save_png(tmp_path / "e.png", noise_image(3, 64, 64))
    out = tmp_path / "out.mp4"
    arguments = ["generate", *FAST, "--out", str(out), "--end-image", str(end), "--end-strength", "0.5"]
    arguments += [
        "--start-strength",
        "0.9",
        "--keyframe",
        f"1={odd}",
        "--keyframe",
        f"0.1s={plain}",
        "--keyframe-embeds",
    ]
    assert main(arguments) == 0
    assert out.is_file()
    config = given["config"]
    assert (config.end_strength, config.start_strength, config.keyframe_embeds) == (0.5, 0.9, True)
    keyframes = given["keyframes"]
    assert sorted(keyframes) == [0, 1]  # 0.1 s is in section 0 (0..0.4333 s)
    # Paths reach the run (its settings record them with their digests), each the right image.
    assert (keyframes[0], keyframes[1]) == (str(plain), str(odd))
    assert np.array_equal(load_image(keyframes[0]), KEY_B) and np.array_equal(load_image(keyframes[1]), KEY_A)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keyframe", "1={missing}"], "--keyframe '1=.*missing.png': image file .* does not exist"),
        (["--keyframe", "{missing}"], "--keyframe .*: expected SECTION=PATH"),
        (["--keyframe", "1.5={png}"], "--keyframe .*: expected SECTION=PATH"),
        (["--keyframe", "2={png}"], r"section 2 is not in the video: its 2 section\(s\) are 0 to 1"),
        (["--keyframe", "1={png}", "--keyframe", "0.5s={png}"], "1 and 0.5s both name section 1"),
        (["--keyframe", "0={png}", "--mode", "forward"], "only the 'inverted' mode takes keyframes"),
        (["--end-strength", "2.5"], r"end_strength: expected a number in \[0, 2\]"),
        (["--start-strength", "-1"], r"start_strength: expected a number in \[0, 2\]"),
    ],
)
def test_bad_keyframes_fail_in_one_line_before_any_model_loads(
    extra: list[str], message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(FramePackPipeline, "tiny", no_model)
    png = save_png(tmp_path / "k.png", KEY_A)
    extra = [a.format(missing=tmp_path / "missing.png", png=png) for a in extra]
    assert main(["generate", *FAST, "--out", str(tmp_path / "o.mp4"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]


def test_plan_shows_the_keyframe_of_each_section(capsys) -> None:
    # 5 s at window 9: sections start at 0, 1.23, 2.43, 3.63 s (frames 0, 37, 73, 109); 3.7 s is in section 3
    assert main(["plan", "--seconds", "5", "--keyframe", "1=a.png", "--keyframe", "3.7s=b=c.png"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-5:] == [
        "start-frame slot by section, in video order:",
        "  video section 0 (0.00-1.23 s): a.png (the keyframe of section 1)",
        "  video section 1 (1.23-2.43 s): a.png (its own keyframe)",
        "  video section 2 (2.43-3.63 s): b=c.png (the keyframe of section 3)",
        "  video section 3 (3.63-5.00 s): b=c.png (its own keyframe)",
    ]
