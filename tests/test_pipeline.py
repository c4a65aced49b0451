"""The tiny pipeline end to end: both modes, streaming, determinism, cancel, resume, mp4 output."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cache import TeaCache
from framepack.cli import demo_image
from framepack.errors import GenerationCancelled, InputError, OutputError
from framepack.runstate import load_run_state
from framepack.video import preview_mp4, write_mp4

# window 3 at 30 fps: 12 pixel frames a section, so 0.8 s is two sections; 64 px keeps it fast.
FAST = dict(window=3, steps=3, resolution=64, seconds=0.8)


@pytest.fixture(scope="module")
def pipe() -> FramePackPipeline:
    return FramePackPipeline.tiny(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return demo_image(96)


def read_mp4(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate)


@pytest.mark.parametrize("mode", ["inverted", "forward"])
def test_generate_writes_every_frame_of_every_section(pipe, image, tmp_path: Path, mode: str) -> None:
    config = GenerationConfig(mode=mode, crf=0, **FAST)
    run = pipe.stream(image, "a dancer", config, run_dir=tmp_path / "run")
    sections = list(run)
    video = run.result()

    assert [s.index for s in sections] == [0, 1]
    latent_frames = 2 * 3 + 1
    assert video.latents.shape == (1, 16, latent_frames, 8, 8)
    assert video.num_frames == 4 * latent_frames - 3
    assert all(s.frames.dtype == np.uint8 and s.frames.shape[1:] == (64, 64, 3) for s in sections)
    assert sections[-1].video_frames == video.num_frames

    frames, fps = read_mp4(video.save(tmp_path / "out.mp4"))
    assert len(frames) == video.num_frames and fps == 30
    assert frames[0].shape == (64, 64, 3)
    # crf 0 is quantizer 1: beyond the yuv420p conversion (large on these noisy frames) little is lost.
    expected = np.stack([as_yuv420p(f) for f in video.frames()]).astype(int)
    assert np.abs(np.stack(frames).astype(int) - expected).mean() < 0.5


def as_yuv420p(frame: np.ndarray) -> np.ndarray:
    """What a frame looks like after the conversion to the file's pixel format, and back."""
    return (
        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        .reformat(format="yuv420p")
        .to_ndarray(format="rgb24")
    )


def test_decoded_chunks_go_to_the_host_one_at_a_time(pipe, image, tmp_path: Path, monkeypatch) -> None:
    vae = pipe.components.vae
    decode_frames = vae.decode_frames
    chunks_per_decode: list[int] = []

    def one_at_a_time(latents: torch.Tensor, *, tiling: object = None):  # type: ignore[no-untyped-def]
        chunks_per_decode.append(0)
        for chunk in decode_frames(latents, tiling=tiling):
            handed = chunk.clone()  # referenced only by the pipeline once yielded
            alive = weakref.ref(handed)
            yield handed
            del handed
            assert alive() is None, "the pipeline asked for the next chunk while still holding this one"
            chunks_per_decode[-1] += 1

    monkeypatch.setattr(vae, "decode_frames", one_at_a_time)
    video = pipe.generate(image, "a dancer", GenerationConfig(**FAST), run_dir=tmp_path / "run")
    assert video.num_frames == 4 * 7 - 3
    assert len(chunks_per_decode) == 2 and max(chunks_per_decode) > 1  # a section decodes in several chunks


def test_same_seed_same_video_and_other_seed_another(pipe, image, tmp_path: Path) -> None:
    first = pipe.generate(image, "a dancer", GenerationConfig(seed=7, **FAST), run_dir=tmp_path / "a")
    again = pipe.generate(image, "a dancer", GenerationConfig(seed=7, **FAST), run_dir=tmp_path / "b")
    other = pipe.generate(image, "a dancer", GenerationConfig(seed=8, **FAST), run_dir=tmp_path / "c")
    assert torch.equal(first.latents, again.latents)
    assert not torch.equal(first.latents, other.latents)


def cancel_in_section(section: int):  # type: ignore[no-untyped-def]
    def callback(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.section == section:
            raise GenerationCancelled("stop")

    return callback


@pytest.mark.parametrize("mode", ["inverted", "forward"])
def test_cancel_then_resume_equals_an_uninterrupted_run(pipe, image, tmp_path: Path, mode: str) -> None:
    config = GenerationConfig(mode=mode, cache=TeaCache(0.15), **{**FAST, "seconds": 1.2})  # three sections
    whole = pipe.generate(image, "a dancer", config, run_dir=tmp_path / "whole")

    with pytest.raises(GenerationCancelled) as cancelled:
        pipe.generate(image, "a dancer", config, run_dir=tmp_path / "cut", callback=cancel_in_section(1))
    assert cancelled.value.partial is not None and cancelled.value.partial.shape[2] == (3 if mode == "inverted" else 4)
    saved = load_run_state(tmp_path / "cut")
    assert saved is not None and saved.sections_done == 1
    frames, _ = read_mp4(tmp_path / "cut" / "preview.mp4")  # the finished section, though the run was cancelled
    assert len(frames) == int(saved.tensors["frame_count"])
    assert not preview_threads()

    resumed = pipe.generate(image, "a dancer", config, resume=tmp_path / "cut")
    assert torch.equal(resumed.latents, whole.latents)
    assert np.array_equal(np.stack(list(resumed.frames())), np.stack(list(whole.frames())))


def preview_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "framepack-preview"]


@pytest.mark.parametrize("mode", ["inverted", "forward"])
def test_the_preview_shows_the_video_so_far(pipe, image, tmp_path: Path, mode: str) -> None:
    run = pipe.stream(image, "a dancer", GenerationConfig(mode=mode, **FAST), run_dir=tmp_path / "run")
    for section in run:
        assert run.wait_for_preview() == section.preview
        frames, _ = read_mp4(section.preview)
        assert len(frames) == section.video_frames
    frames, _ = read_mp4(section.preview)  # the last one: the whole video
    assert len(frames) == run.result().num_frames == 4 * 7 - 3
    assert not preview_threads()


def test_the_next_section_samples_while_the_preview_encodes(pipe, image, tmp_path: Path, monkeypatch) -> None:
    """The first preview's encode cannot end before the second section has started sampling."""
    second_section_started = threading.Event()
    encoded: list[bool] = []

    def slow_write_mp4(path: Path, frames, *, fps: float, crf: int) -> Path:  # type: ignore[no-untyped-def]
        encoded.append(second_section_started.wait(timeout=60))  # False only if the loop waited for us
        return write_mp4(path, frames, fps=fps, crf=crf)

    def callback(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.section == 1:
            second_section_started.set()

    monkeypatch.setattr(preview_mp4, "write_mp4", slow_write_mp4)
    run = pipe.stream(image, "a dancer", GenerationConfig(**FAST), run_dir=tmp_path / "run", callback=callback)
    sections = iter(run)
    assert next(sections).index == 0
    assert next(sections).index == 1
    run.wait_for_preview()
    assert encoded[0], "the first preview was encoded before the second section started"
    assert list(sections) == []
    assert not preview_threads()


def test_no_preview_thread_outlives_a_run_given_up_midway(pipe, image, tmp_path: Path) -> None:
    sections = iter(pipe.stream(image, "a dancer", GenerationConfig(**FAST), run_dir=tmp_path / "run"))
    next(sections)
    sections.close()
    assert not preview_threads()


def test_a_preview_encoder_error_fails_the_run_naming_the_file(pipe, image, tmp_path: Path, monkeypatch) -> None:
    tried = threading.Event()

    def broken_write_mp4(path: Path, frames, *, fps: float, crf: int) -> Path:  # type: ignore[no-untyped-def]
        tried.set()
        raise OSError("No space left on device")

    def callback(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.section == 1:
            assert tried.wait(timeout=60)  # the first preview has failed before the run can end

    monkeypatch.setattr(preview_mp4, "write_mp4", broken_write_mp4)
    with pytest.raises(OutputError, match=r"preview\.mp4: No space left on device"):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), run_dir=tmp_path / "run", callback=callback)
    assert not preview_threads()


def test_resume_with_other_inputs_names_what_differs(pipe, image, tmp_path: Path) -> None:
    config = GenerationConfig(**FAST)
    with pytest.raises(GenerationCancelled):
        pipe.generate(image, "a dancer", config, run_dir=tmp_path / "cut", callback=cancel_in_section(1))
    with pytest.raises(InputError, match="prompt"):
        pipe.generate(image, "a cat", config, resume=tmp_path / "cut")
    with pytest.raises(InputError, match="steps"):
        pipe.generate(image, "a dancer", GenerationConfig(**{**FAST, "steps": 4}), resume=tmp_path / "cut")


def test_end_image_and_text_to_video_run(pipe, image, tmp_path: Path) -> None:
    end = pipe.generate(
        image, "a dancer", GenerationConfig(**FAST), end_image=image[::-1].copy(), run_dir=tmp_path / "e"
    )
    plain = pipe.generate(image, "a dancer", GenerationConfig(**FAST), run_dir=tmp_path / "p")
    assert not torch.equal(end.latents, plain.latents)  # the end frame conditions the video's end
    text_only = pipe.generate(None, "a dancer", GenerationConfig(**FAST), run_dir=tmp_path / "t")
    assert torch.count_nonzero(text_only.latents[:, :, 0]) == 0  # a zero start latent
    assert text_only.latents.shape[2] == 7


def test_unreadable_image_fails_before_any_work(pipe, tmp_path: Path) -> None:
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        pipe.generate(bad, "a dancer", GenerationConfig(**FAST), run_dir=tmp_path / "run")


def test_a_run_directory_is_never_mixed_up(pipe, image, tmp_path: Path) -> None:
    config = GenerationConfig(**FAST)
    pipe.generate(image, "a dancer", config, run_dir=tmp_path / "run")
    with pytest.raises(InputError, match="already holds a run: continue it with resume="):
        pipe.generate(image, "a dancer", config, run_dir=tmp_path / "run")
    with pytest.raises(InputError, match="expected a run directory with state.json, found none"):
        pipe.generate(image, "a dancer", config, resume=tmp_path / "nothing here")
