"""``framepack generate --from`` makes a video again from the settings it carries; typed flags override."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepack import FramePackPipeline, GenerationConfig
from framepack.cli import _generate_arguments, _parser, demo_image, main, model_choice_arguments
from framepack.errors import InputError
from framepack.run_arguments import apply_from, config_from_arguments, typed_destinations
from framepack.run_settings import file_digest, read_settings
from tests.queue_support import TWO_SECTIONS, run_frames


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-section tiny video from an image file, with settings away from their defaults."""
    folder = tmp_path_factory.mktemp("original")
    image = folder / "start.png"
    Image.fromarray((np.arange(40 * 56 * 3) % 241).astype(np.uint8).reshape(40, 56, 3)).save(image)
    arguments = [*TWO_SECTIONS, "--image", str(image), "--prompt", "a dancer", "--seed", "7", "--distilled-cfg", "8"]
    assert main(["generate", *arguments, "--out", str(folder / "a.mp4"), "--run-dir", str(folder / "run")]) == 0
    return folder


def test_from_a_video_makes_the_same_frames(original: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.mp4"
    assert (
        main(["generate", "--from", str(original / "a.mp4"), "--out", str(again), "--run-dir", str(tmp_path / "run")])
        == 0
    )
    assert np.array_equal(run_frames(tmp_path / "run"), run_frames(original / "run"))  # bit for bit, before encoding
    assert read_settings(again)["config"] == read_settings(original / "a.mp4")["config"]


def test_from_settings_json_with_a_typed_seed_changes_only_the_seed(original: Path, tmp_path: Path) -> None:
    out = tmp_path / "seed5.mp4"
    source = original / "run" / "settings.json"
    assert (
        main(["generate", "--from", str(source), "--seed", "5", "--out", str(out), "--run-dir", str(tmp_path / "r")])
        == 0
    )
    before, after = read_settings(source), read_settings(out)
    changed = {k for k in before["config"] if before["config"][k] != after["config"][k]}
    assert changed == {"seed"} and after["config"]["seed"] == 5
    assert after["config"]["distilled_cfg"] == 8.0  # the record's, not the flag's default 10
    assert after["inputs"] == before["inputs"]
    assert not np.array_equal(run_frames(tmp_path / "r"), run_frames(original / "run"))  # another seed, another video


def test_a_typed_flag_overrides_even_at_its_default_value(original: Path, tmp_path: Path) -> None:
    """``--seed 31337`` typed is an override even though it is the default; not typing it is none."""
    out = tmp_path / "default_seed.mp4"
    assert main(["generate", "--from", str(original / "a.mp4"), "--seed", "31337", "--out", str(out)]) == 0
    assert read_settings(out)["config"]["seed"] == 31337


@pytest.mark.parametrize(
    ("change", "message"), [("edit", "changed since the video was made"), ("remove", "does not exist")]
)
def test_a_changed_or_missing_image_asks_for_image(
    original: Path, tmp_path: Path, change: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record = read_settings(original / "a.mp4")
    copy = tmp_path / "a.mp4"
    copy.write_bytes((original / "a.mp4").read_bytes())
    image = Path(record["inputs"]["image"]["path"])
    saved = image.read_bytes()
    try:
        if change == "edit":
            image.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
        else:
            image.unlink()
        assert main(["generate", "--from", str(copy), "--out", str(tmp_path / "b.mp4")]) == 2
    finally:
        image.write_bytes(saved)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.rstrip().endswith("give --image")
    assert not (tmp_path / "b.mp4").exists()


def test_from_with_the_tiny_demo_image_and_no_image_file(tmp_path: Path) -> None:
    """A --tiny run on its built-in image records it as pixels; --from makes it again."""
    first, second = tmp_path / "first.mp4", tmp_path / "second.mp4"
    assert main(["generate", *TWO_SECTIONS, "--seed", "3", "--out", str(first), "--run-dir", str(tmp_path / "r1")]) == 0
    assert read_settings(first)["models"]["kind"] == "tiny"
    assert main(["generate", "--from", str(first), "--out", str(second), "--run-dir", str(tmp_path / "r2")]) == 0
    assert np.array_equal(run_frames(tmp_path / "r1"), run_frames(tmp_path / "r2"))


def test_from_a_file_without_settings_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "notes.json"
    other.write_text("[1, 2]")
    assert main(["generate", "--from", str(other), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --from {other}: expected framepack's settings") and err.count("\n") == 1


def pretrained_record(original: Path, tmp_path: Path, lora: Path) -> Path:
    """The original's settings as if made from hub repos in bf16 with a LoRA (no model is loaded here)."""
    record = read_settings(original / "a.mp4")
    record["models"] = {"kind": "pretrained", "transformer": "me/i2v", "hunyuan": "me/hunyuan", "redux": "me/redux",
                        "weights": None, "dtype": "torch.bfloat16", "weights_digest": "0" * 32}  # fmt: skip
    record["loras"] = [{"source": str(lora), "digest": file_digest(lora), "strength": 0.5, "fused": False}]
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(record))
    return path


def test_from_takes_the_model_flags_unless_one_is_typed(original: Path, tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"lora bytes")
    source = pretrained_record(original, tmp_path, lora)

    args = _parser().parse_args(["generate", "--from", str(source)])
    apply_from(args, set(), demo_image, model_choice=model_choice_arguments())
    assert (args.model, args.hunyuan, args.redux, args.dtype, args.tiny) == (
        "me/i2v",
        "me/hunyuan",
        "me/redux",
        "bf16",
        False,
    )
    assert args.lora == [f"{lora}:0.5"] and (args.seed, args.distilled_cfg) == (7, 8.0)

    typed = _parser().parse_args(["generate", "--from", str(source), "--tiny"])
    apply_from(typed, {"tiny"}, demo_image, model_choice=model_choice_arguments())
    assert (typed.model, typed.hunyuan, typed.dtype, typed.lora, typed.tiny) == (None, None, None, [], True)

    lora.write_bytes(b"other lora bytes")
    with pytest.raises(InputError, match="changed since the video was made; give --lora"):
        apply_from(
            _parser().parse_args(["generate", "--from", str(source)]),
            set(),
            demo_image,
            model_choice=model_choice_arguments(),
        )


def test_from_makes_a_video_with_keyframes_again(original: Path, tmp_path: Path) -> None:
    key = tmp_path / "key.png"
    Image.fromarray((np.arange(40 * 56 * 3) % 199).astype(np.uint8).reshape(40, 56, 3)).save(key)
    first = tmp_path / "first.mp4"
    arguments = [
        *TWO_SECTIONS,
        "--image",
        str(original / "start.png"),
        "--keyframe",
        f"0.18s={key}",  # window 1 at 30 fps: video section 1 starts on frame 5, at 0.167 s
        "--end-strength",
        "0.5",
    ]
    assert main(["generate", *arguments, "--out", str(first), "--run-dir", str(tmp_path / "r1")]) == 0
    record = read_settings(first)
    assert record["inputs"]["keyframes"] == {"1": {"path": str(key.absolute()), "digest": file_digest(key)}}
    assert record["config"]["end_strength"] == 0.5
    second = tmp_path / "second.mp4"
    assert main(["generate", "--from", str(first), "--out", str(second), "--run-dir", str(tmp_path / "r2")]) == 0
    assert np.array_equal(run_frames(tmp_path / "r1"), run_frames(tmp_path / "r2"))
    assert read_settings(second)["inputs"] == record["inputs"]


def test_from_makes_a_video_with_a_blended_prompt_schedule_again(tmp_path: Path) -> None:
    schedule = "[0s: a dancer] [0.17s: a cat]"  # video sections 0 and 1 at window 1 (section 1 starts at 0.167 s)
    first = tmp_path / "first.mp4"
    arguments = [*TWO_SECTIONS, "--prompt", schedule, "--prompt-blend", "1"]
    assert main(["generate", *arguments, "--out", str(first), "--run-dir", str(tmp_path / "r1")]) == 0
    recorded = read_settings(first)["inputs"]["prompt"]
    assert recorded["blend_sections"] == 1 and "a cat" in recorded["schedule"]  # the blend is kept beside the text
    second = tmp_path / "second.mp4"
    assert main(["generate", "--from", str(first), "--out", str(second), "--run-dir", str(tmp_path / "r2")]) == 0
    assert np.array_equal(run_frames(tmp_path / "r1"), run_frames(tmp_path / "r2"))
    assert read_settings(second)["inputs"]["prompt"] == recorded


def from_arguments(*argv: str) -> argparse.Namespace:
    """``generate ARGV`` after --from filled it in, as ``framepack generate`` does (no model loaded)."""
    args = _parser().parse_args(["generate", *argv])
    apply_from(args, typed_destinations(_generate_arguments, argv), demo_image, model_choice=model_choice_arguments())
    return args


def test_a_typed_placement_flag_keeps_the_records_models(original: Path) -> None:
    video = str(original / "a.mp4")
    models = read_settings(video)["models"]
    assert (models["kind"], models["device"], models["compile"]) == ("tiny", "cpu", False)
    compiled = from_arguments("--from", video, "--compile")
    assert (compiled.tiny, compiled.compile, compiled.device) == (True, True, "cpu")
    budget = from_arguments("--from", video, "--vram-budget", "3")
    assert (budget.tiny, budget.vram_budget, budget.compile) == (True, 3.0, False)


def test_from_compiles_and_picks_the_device_type_as_the_record_says(original: Path, tmp_path: Path) -> None:
    record = read_settings(original / "a.mp4")
    assert record["models"]["compile"] is False
    record["models"] |= {"compile": True, "device": "meta"}
    source = tmp_path / "settings.json"
    source.write_text(json.dumps(record))
    args = from_arguments("--from", str(source))
    assert (args.compile, args.device, args.tiny) == (True, "meta", True)
    typed = from_arguments("--from", str(source), "--device", "cpu")
    assert (typed.compile, typed.device) == (True, "cpu")


def test_compiling_is_in_the_fingerprint_only_when_on() -> None:
    pipe = FramePackPipeline.tiny()
    config = GenerationConfig(seconds=0.1, window=1, steps=1, resolution=32)
    inputs = pipe.encode(demo_image(32), "a dancer", config)
    eager = pipe.fingerprint(inputs, "a dancer", config)
    assert "compile" not in eager
    pipe.compile()
    assert pipe.fingerprint(inputs, "a dancer", config) == eager | {"compile": True}


def test_from_refuses_other_weights_than_the_records(
    original: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = read_settings(original / "a.mp4")
    record["models"]["weights_digest"] = "0" * 32
    source = tmp_path / "settings.json"
    source.write_text(json.dumps(record))
    assert main(["generate", "--from", str(source), "--out", str(tmp_path / "b.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --from {source}: the weights loaded (digest ") and err.count("\n") == 1
    assert f"are not those that made the video ({'0' * 32})" in err and not (tmp_path / "b.mp4").exists()
    # Typed model flags are the user's choice: no record to compare with.
    assert main(["generate", "--from", str(source), "--tiny", "--out", str(tmp_path / "c.mp4")]) == 0


def edited_record(original: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    record = read_settings(original / "a.mp4")
    edit(record)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(record))
    return path


def test_from_a_video_with_keyframes_keyed_by_seconds_through_the_api(original: Path, tmp_path: Path) -> None:
    key = tmp_path / "key.png"
    Image.fromarray((np.arange(40 * 56 * 3) % 199).astype(np.uint8).reshape(40, 56, 3)).save(key)
    config = GenerationConfig(seconds=0.2, window=1, steps=1, resolution=32, seed=4)
    made = FramePackPipeline.tiny(seed=0).generate(
        str(original / "start.png"), "a dancer", config, keyframes={0.1: str(key)}, run_dir=tmp_path / "r1"
    )
    first = made.save(tmp_path / "first.mp4", keep_run_dir=True)
    assert list(read_settings(first)["inputs"]["keyframes"]) == ["0.1"]  # seconds, as given
    assert from_arguments("--from", str(first)).keyframe == [f"0.1s={key.absolute()}"]
    assert (
        main(["generate", "--from", str(first), "--out", str(tmp_path / "b.mp4"), "--run-dir", str(tmp_path / "r2")])
        == 0
    )
    assert np.array_equal(run_frames(tmp_path / "r1"), run_frames(tmp_path / "r2"))


def test_recorded_keyframe_keys_become_section_and_seconds_flags(original: Path, tmp_path: Path) -> None:
    image = read_settings(original / "a.mp4")["inputs"]["image"]
    keyed = edited_record(original, tmp_path, lambda r: r["inputs"].update(keyframes={"3": image, "2.0": image}))
    assert from_arguments("--from", str(keyed)).keyframe == [f"3={image['path']}", f"2s={image['path']}"]
    bad = edited_record(original, tmp_path, lambda r: r["inputs"].update(keyframes={"soon": image}))
    with pytest.raises(InputError, match="expected a keyframe key as a section .3. or seconds .2.5., got 'soon'"):
        from_arguments("--from", str(bad))


def test_a_typed_plain_prompt_drops_the_records_blend(original: Path, tmp_path: Path) -> None:
    schedule = {"schedule": "[0s: a dancer] [0.1s: a cat]", "blend_sections": 1}
    blended = edited_record(original, tmp_path, lambda r: r["inputs"].update(prompt=schedule))
    assert from_arguments("--from", str(blended)).prompt_blend == 1
    plain = from_arguments("--from", str(blended), "--prompt", "plain")
    assert (plain.prompt, plain.prompt_blend) == ("plain", None)


def test_a_hand_edited_record_is_one_clear_error_or_the_defaults(original: Path, tmp_path: Path) -> None:
    no_resolution = edited_record(original, tmp_path, lambda r: r["config"].pop("resolution"))
    args = from_arguments("--from", str(no_resolution))
    assert args.resolution is None and args.seed == 7  # the default (--tiny's), the rest as recorded
    text_steps = edited_record(original, tmp_path, lambda r: r["config"].update(steps="8"))
    with pytest.raises(InputError, match=f"^{text_steps}: expected config 'steps' to be int, got '8'$"):
        from_arguments("--from", str(text_steps))
    list_cfg = edited_record(original, tmp_path, lambda r: r["config"].update(seconds=[1]))
    with pytest.raises(InputError, match="expected config 'seconds' to be float, got \\[1\\]"):
        from_arguments("--from", str(list_cfg))


def test_no_vae_tiling_turns_off_the_tiling_a_record_asks_for(original: Path, tmp_path: Path) -> None:
    record = json.loads((original / "run" / "settings.json").read_text())
    record["config"]["vae_tiling"] = True  # as made with --vae-tiling
    source = tmp_path / "settings.json"
    source.write_text(json.dumps(record))
    assert config_from_arguments(from_arguments("--from", str(source))).vae_tiling is True
    assert config_from_arguments(from_arguments("--from", str(source), "--no-vae-tiling")).vae_tiling is False
