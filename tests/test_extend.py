"""Video extension: a finished run or a video file continued by forward sections, API and CLI."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from framepack import FramePackPipeline, GenerationConfig, atomic
from framepack.cli import demo_image, main
from framepack.errors import ConfigError, GenerationCancelled, InputError
from framepack.run_settings import read_settings
from framepack.runstate import load_run_state
from framepack.video import write_mp4

# window 3 at 30 fps: 12 pixel frames a section (0.4 s), a 9-frame overlap; 32 px keeps the VAE fast.
FAST = dict(window=3, steps=2, resolution=32, seed=7)
FORWARD = GenerationConfig(mode="forward", **FAST)
PROMPT = "a dancer"
OVERLAP = 4 * 3 - 3


@pytest.fixture(scope="module")
def pipe() -> FramePackPipeline:
    return FramePackPipeline.tiny(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return demo_image(96)


@pytest.fixture(scope="module")
def runs(pipe, image, tmp_path_factory) -> dict:
    """A finished forward run of 0.4 s (one section) and the 1.2 s run (three) it should extend to."""
    root = tmp_path_factory.mktemp("runs")
    short = pipe.generate(image, PROMPT, GenerationConfig(mode="forward", seconds=0.4, **FAST), run_dir=root / "short")
    long = pipe.generate(image, PROMPT, GenerationConfig(mode="forward", seconds=1.2, **FAST), run_dir=root / "long")
    return {"short": short, "long": long, "short_files": file_hashes(root / "short")}


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def frames_of(video) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack(list(video.frames()))


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def input_video(path: Path, count: int, fps: int = 30) -> Path:
    """A 32x32 clip (its own bucket at resolution 32) whose frames all differ."""
    y, x = np.mgrid[0:32, 0:32]
    frames = [
        np.stack([(x * 8 + t * 7) % 256, (y * 8) % 256, (x + y + t * 3) % 256], axis=-1).astype(np.uint8)
        for t in range(count)
    ]
    return write_mp4(path, frames, fps=fps, crf=0)


def test_extending_a_forward_run_is_the_longer_run_bit_for_bit(pipe, image, runs, tmp_path: Path) -> None:
    short, long = runs["short"], runs["long"]
    extended = pipe.extend(short.run_dir, 0.8, PROMPT, image=image, run_dir=tmp_path / "ext")

    assert torch.equal(extended.latents, long.latents)
    assert np.array_equal(frames_of(extended), frames_of(long))
    assert file_hashes(short.run_dir) == runs["short_files"]  # the source is only read
    assert len(decode(extended.run_dir / "video.mp4")) == long.num_frames


def test_an_interrupted_extension_resumes_to_the_longer_run(pipe, image, runs, tmp_path: Path) -> None:
    short, long = runs["short"], runs["long"]

    def cancel_in_last_section(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.section == 2:
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        pipe.extend(short.run_dir, 0.8, PROMPT, image=image, run_dir=tmp_path / "ext", callback=cancel_in_last_section)
    state = load_run_state(tmp_path / "ext")
    assert state is not None and state.sections_done == 2  # the source's one and one new one

    resumed = pipe.extend(short.run_dir, 0.8, PROMPT, image=image, resume=tmp_path / "ext")
    assert torch.equal(resumed.latents, long.latents)
    assert np.array_equal(frames_of(resumed), frames_of(long))
    assert file_hashes(short.run_dir) == runs["short_files"]

    with pytest.raises(InputError, match="prompt changed"):
        pipe.extend(short.run_dir, 0.8, "another prompt", image=image, resume=tmp_path / "ext")


def test_an_inverted_run_is_continued_from_its_exact_latents_and_frames(pipe, image, tmp_path: Path) -> None:
    inverted = pipe.generate(
        image, PROMPT, GenerationConfig(mode="inverted", seconds=0.8, **FAST), run_dir=tmp_path / "inv"
    )
    before = file_hashes(tmp_path / "inv")
    extended = pipe.extend(tmp_path / "inv", 0.4, PROMPT, FORWARD, image=image, run_dir=tmp_path / "ext")

    assert extended.num_frames == inverted.num_frames + 4 * 3
    assert torch.equal(extended.latents[:, :, : inverted.latents.shape[2]], inverted.latents)
    assert extended.latents.shape[2] == inverted.latents.shape[2] + 3
    kept = inverted.num_frames - OVERLAP  # the rest blends into the new section
    assert np.array_equal(frames_of(extended)[: kept + 1], frames_of(inverted)[: kept + 1])
    assert file_hashes(tmp_path / "inv") == before


@pytest.mark.parametrize("count", [21, 81])  # shorter than the 73 frames encoded (zero-padded), and longer
def test_a_video_file_is_joined_with_its_continuation(pipe, count: int, tmp_path: Path) -> None:
    source = input_video(tmp_path / "in.mp4", count)
    decoded = decode(source)
    assert len(decoded) == count

    extended = pipe.extend(source, 0.4, PROMPT, FORWARD, run_dir=tmp_path / "ext")

    frames = frames_of(extended)
    assert len(frames) == count + 4 * 3  # one new section
    kept = count - OVERLAP
    # The input's frames are handed to the writer as decoded, up to and including the first
    # blended one (whose weight is 1), never through the VAE.
    assert np.array_equal(frames[: kept + 1], np.stack(decoded[: kept + 1]))
    assert not np.array_equal(frames[count - 1], decoded[-1])  # the end of the input blends into the new part

    # History: the last 4k - 3 frames encoded as one clip, zero-padded in front to 19 latents.
    encoded = min(19, (count + 3) // 4)
    clip = torch.from_numpy(np.stack(decoded[count - (4 * encoded - 3) :])).permute(3, 0, 1, 2)[None]
    expected = pipe.components.vae.encode(clip.float() / 127.5 - 1.0)
    assert extended.latents.shape[2] == 19 + 3
    assert torch.equal(extended.latents[:, :, 19 - encoded : 19], expected)
    assert not extended.latents[:, :, : 19 - encoded].any()

    out = extended.save(tmp_path / "out.mp4")
    assert len(decode(out)) == count + 4 * 3
    assert len(decode(source)) == count


def test_a_video_extension_extended_again_is_the_longer_video_extension(pipe, tmp_path: Path) -> None:
    source = input_video(tmp_path / "in.mp4", 21)
    once = pipe.extend(source, 0.8, PROMPT, FORWARD, run_dir=tmp_path / "once")
    first = pipe.extend(source, 0.4, PROMPT, FORWARD, run_dir=tmp_path / "first")
    again = pipe.extend(first.run_dir, 0.4, PROMPT, run_dir=tmp_path / "again")  # its own settings and start frame

    assert torch.equal(again.latents, once.latents)
    assert np.array_equal(frames_of(again), frames_of(once))


def test_bad_sources_and_settings_fail_before_any_run_directory(pipe, image, runs, tmp_path: Path) -> None:
    target = tmp_path / "ext"
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("")
    short = input_video(tmp_path / "short.mp4", OVERLAP - 1)
    slow = input_video(tmp_path / "slow.mp4", 2 * OVERLAP, fps=24)
    (tmp_path / "empty.mp4").write_bytes(b"")
    run = runs["short"].run_dir
    cases = [
        (tmp_path / "missing.mp4", FORWARD, 0.4, InputError, "does not exist"),
        (tmp_path / "notes.txt", FORWARD, 0.4, InputError, "not a readable video"),
        (tmp_path / "empty.mp4", FORWARD, 0.4, InputError, "is empty"),
        (slow, FORWARD, 0.4, ConfigError, "plays at 24 fps but the extension would be made at 30"),
        (short, FORWARD, 0.4, InputError, f"has {OVERLAP - 1} frame\\(s\\); continuing it needs at least {OVERLAP}"),
        (tmp_path / "folder", FORWARD, 0.4, InputError, "without framepack-run.json"),
        (run, GenerationConfig(mode="inverted", **FAST), 0.4, ConfigError, "mode='forward'"),
        (run, GenerationConfig(mode="forward", **{**FAST, "window": 4}), 0.4, ConfigError, "window 3"),
        (run, FORWARD, 0.1, ConfigError, "still 1 section"),
        (run, FORWARD, float("nan"), ConfigError, "finite number > 0"),
    ]
    for source, config, seconds, error, message in cases:
        with pytest.raises(error, match=message):
            pipe.extend(source, seconds, PROMPT, config, run_dir=target)
        assert not target.exists()
    with pytest.raises(InputError, match="inside the run being extended"):
        pipe.extend(run, 0.4, PROMPT, FORWARD, run_dir=run / "ext")
    assert file_hashes(run) == runs["short_files"]


def test_an_unfinished_run_is_refused(pipe, image, tmp_path: Path) -> None:
    def cancel(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.section == 1:
            raise GenerationCancelled("stop")

    config = GenerationConfig(mode="forward", seconds=0.8, **FAST)
    with pytest.raises(GenerationCancelled):
        pipe.generate(image, PROMPT, config, run_dir=tmp_path / "cut", callback=cancel)
    with pytest.raises(InputError, match="finished 1 of 2 sections; finish it first"):
        pipe.extend(tmp_path / "cut", 0.4, PROMPT, run_dir=tmp_path / "ext")


def test_the_command_extends_a_run_with_its_own_settings_and_a_video(runs, image, tmp_path: Path, capsys) -> None:
    start = tmp_path / "start.png"
    Image.fromarray(image).save(start)
    run_dir = tmp_path / "ext-run"
    arguments = ["extend", str(runs["short"].run_dir), "--tiny", "--seconds", "0.8", "--prompt", PROMPT]
    assert main([*arguments, "--image", str(start), "--out", str(tmp_path / "a.mp4"), "--run-dir", str(run_dir)]) == 0
    assert len(decode(tmp_path / "a.mp4")) == runs["long"].num_frames
    # No sampling flag given: the run's own settings (steps 2, seed 7, window 3) continued it.
    assert torch.equal(load_run_state(run_dir).tensors["history"], runs["long"].latents)

    source = input_video(tmp_path / "in.mp4", 21)
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    video_flags = ["--tiny", "--seconds", "0.4", "--window", "3", "--steps", "2", "--resolution", "32"]
    assert main(["extend", str(source), *video_flags, "--out", str(tmp_path / "b.mp4")]) == 0
    assert len(decode(tmp_path / "b.mp4")) == 21 + 4 * 3
    capsys.readouterr()

    assert main(["extend", str(source), *video_flags, "--out", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out: expected a path of its own") and err.count("\n") == 1
    assert main(["extend", str(tmp_path / "nope.mp4"), *video_flags]) == 2
    assert capsys.readouterr().err.startswith("error: source")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(("flag", "tiling"), [("--vae-tiling", True), ("--no-vae-tiling", False)])
def test_the_command_forces_vae_tiling_either_way(flag: str, tiling: bool, tmp_path: Path) -> None:
    out = tmp_path / "b.mp4"
    video_flags = ["--tiny", "--seconds", "0.4", "--window", "3", "--steps", "2", "--resolution", "32"]
    assert main(["extend", str(input_video(tmp_path / "in.mp4", 21)), *video_flags, flag, "--out", str(out)]) == 0
    assert read_settings(out)["config"]["vae_tiling"] is tiling


def test_the_command_keeps_a_file_that_appears_at_out_while_it_extends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = input_video(tmp_path / "in.mp4", 21), tmp_path / "b.mp4"
    copy = atomic.shutil.copyfile

    def copy_then_the_users_file(source: Path, target: Path) -> None:  # after the start check, before the save
        copy(source, target)
        if Path(target).name.startswith(".b."):
            out.write_bytes(b"the user's own video")

    monkeypatch.setattr(atomic.shutil, "copyfile", copy_then_the_users_file)
    video_flags = ["--tiny", "--seconds", "0.4", "--window", "3", "--steps", "2", "--resolution", "32"]
    run_dir = tmp_path / "run"
    assert main(["extend", str(source), *video_flags, "--out", str(out), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.replace("\r", "\n")  # the progress bar redraws with carriage returns
    assert [line for line in err.splitlines() if "error" in line] == [
        f"error: --out: expected a new file, but {str(out)!r} exists (give another --out, or --overwrite)"
        f" (finished sections are kept: continue with --resume {run_dir})"
    ]
    assert out.read_bytes() == b"the user's own video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.mp4", "in.mp4", "run"]


def test_an_extensions_settings_count_its_real_frames_and_from_refuses_it(pipe, tmp_path: Path, capsys) -> None:
    source = input_video(tmp_path / "in.mp4", 21)
    out = pipe.extend(source, 0.4, PROMPT, FORWARD, run_dir=tmp_path / "ext").save(tmp_path / "out.mp4")
    record = read_settings(out)
    assert (record["video"]["frames"], record["video"]["sections"]) == (21 + 4 * 3, 1)  # the input and one new section
    assert read_settings(tmp_path / "ext" / "settings.json")["video"] == record["video"]
    assert record["extends"] == str(source.absolute())

    assert main(["generate", "--from", str(out), "--out", str(tmp_path / "again.mp4")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --from {out}: the video was made by framepack extend from {source.absolute()}; "
        "run framepack extend again\n"
    )
    assert not (tmp_path / "again.mp4").exists()


# --- prompts: schedules in whole-video time, the run's own prompt by default -----------------

# The short run (one section) extended by 0.8 s is three sections starting at pixel frames 0, 13,
# 25 (0, 0.43, 0.83 s). 0.4 s is nearest section 1's start: in whole-video time the bow starts in
# video section 1, the first new one (timed from the extension's start it would be section 2).
BOWS = "he bows"
SCHEDULE = f"[0s: {PROMPT}] [0.4s: {BOWS}]"


def test_a_schedule_extending_a_run_is_in_whole_video_time(pipe, image, runs, tmp_path: Path) -> None:
    extended = pipe.extend(runs["short"].run_dir, 0.8, SCHEDULE, image=image, run_dir=tmp_path / "ext")
    longer = pipe.generate(image, SCHEDULE, GenerationConfig(mode="forward", seconds=1.2, **FAST))
    assert torch.equal(extended.latents, longer.latents)  # the longer run with the same schedule
    assert not torch.equal(extended.latents, runs["long"].latents)  # which the bow changed
    bow_from_section_2 = pipe.generate(
        image, f"[0s: {PROMPT}] [0.8s: {BOWS}]", GenerationConfig(mode="forward", seconds=1.2, **FAST)
    )
    assert not torch.equal(extended.latents, bow_from_section_2.latents)


def test_a_schedule_for_a_video_file_is_refused_before_any_work(pipe, tmp_path: Path) -> None:
    source = input_video(tmp_path / "in.mp4", 21)
    with pytest.raises(ConfigError, match="prompt schedule: .* a video file's frames were not made in sections"):
        pipe.extend(source, 0.4, SCHEDULE, FORWARD, run_dir=tmp_path / "ext")
    assert not (tmp_path / "ext").exists()


def test_the_command_continues_a_run_with_its_own_prompt(runs, image, tmp_path: Path) -> None:
    start = tmp_path / "start.png"
    Image.fromarray(image).save(start)
    run_dir = tmp_path / "ext-run"
    arguments = ["extend", str(runs["short"].run_dir), "--tiny", "--seconds", "0.8", "--image", str(start)]
    assert main([*arguments, "--out", str(tmp_path / "a.mp4"), "--run-dir", str(run_dir)]) == 0
    # no --prompt: the short run's own, PROMPT, continued it into the longer run made with PROMPT
    assert torch.equal(load_run_state(run_dir).tensors["history"], runs["long"].latents)


def test_extend_prompt_errors_are_one_line_before_any_model_loads(runs, tmp_path: Path, monkeypatch, capsys) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(FramePackPipeline, "tiny", no_model)
    unrecorded = tmp_path / "old-run"
    shutil.copytree(runs["short"].run_dir, unrecorded)
    (unrecorded / "settings.json").unlink()  # as a run made before settings were written
    video = input_video(tmp_path / "in.mp4", 21)
    video_flags = ["--window", "3", "--steps", "2", "--resolution", "32"]
    cases = [
        ([str(unrecorded)], "error: --prompt: the run in .* does not record its prompt"),
        ([str(runs["short"].run_dir), "--prompt", "[0s: a] [x: b]"], r"error: --prompt: prompt schedule: '\[x: b\]'"),
        ([str(runs["short"].run_dir), "--prompt", "[0s: a] [5s: b]"], r"error: prompt schedule: \[5s: b\] names 5s"),
        ([str(runs["short"].run_dir), "--prompt-blend", "1"], "error: --prompt-blend: .* no --prompt was given"),
        ([str(video), *video_flags, "--prompt", SCHEDULE], "error: prompt schedule: .* a video file's frames"),
    ]
    for extra, message in cases:
        out = tmp_path / "o.mp4"
        assert main(["extend", *extra, "--tiny", "--seconds", "0.8", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
        assert not out.exists()
