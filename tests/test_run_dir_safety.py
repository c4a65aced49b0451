"""Run directories and output files against hostile input and faults (issue 13), through the API.

Nothing a caller passes and nothing a disk does may cost them a file: outputs appear whole
or not at all, a run only uses a folder that is new, empty or its own, one run at a time,
and a run state is read as untrusted input.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack import FramePackPipeline, GenerationConfig, atomic
from framepack.cli import demo_image
from framepack.errors import GenerationCancelled, InputError, OutputError, OutputExistsError
from framepack.results import VideoResult
from framepack.rundir import MARKER_FILE, RunDirLock, claim_run_dir
from framepack.video import FrameAssembler

# Forward mode: the first section already finishes frames, so its state names a frame chunk.
FAST = dict(window=3, steps=1, resolution=64, seconds=0.8, mode="forward")  # two sections
ONE = {**FAST, "seconds": 0.4}  # one section


@pytest.fixture(scope="module")
def pipe() -> FramePackPipeline:
    return FramePackPipeline.tiny(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return demo_image(64)


def cancel_in_section(section: int):  # type: ignore[no-untyped-def]
    def callback(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.section == section:
            raise GenerationCancelled("stop")

    return callback


@pytest.fixture(scope="module")
def cut_run(pipe, image, tmp_path_factory) -> Path:
    """A run cancelled after its first of two sections: state.json, one tensors file, one frame chunk."""
    run_dir = tmp_path_factory.mktemp("cut") / "run"
    with pytest.raises(GenerationCancelled):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), run_dir=run_dir, callback=cancel_in_section(1))
    return run_dir


@pytest.fixture
def cut(cut_run: Path, tmp_path: Path) -> Path:
    """A private copy of ``cut_run`` to tamper with."""
    return Path(shutil.copytree(cut_run, tmp_path / "cut"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def edit_state(run_dir: Path, **changes: object) -> None:
    path = run_dir / "state.json"
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


# --- API arguments ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(run_dir=7), "run_dir: expected a folder path (str or os.PathLike) or None; got int"),
        (dict(resume=["a"]), "resume: expected a folder path (str or os.PathLike) or None; got list"),
        (dict(run_dir=""), "run_dir: expected a folder path, got an empty string"),
        (dict(resume=""), "resume: expected a folder path, got an empty string"),
        (dict(callback="print"), "callback: expected a function taking a Progress, or None; got str"),
    ],
)
def test_wrong_arguments_fail_at_the_call(
    pipe, image, arguments: dict, message: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a folder created by mistake would show here
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipe.stream(image, "a dancer", GenerationConfig(**FAST), **arguments)
    assert list(tmp_path.iterdir()) == []


# --- whose folder ---------------------------------------------------------------------------------
def test_a_folder_of_the_users_is_refused_and_left_as_it_was(pipe, image, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "frames").mkdir(parents=True)
    (folder / "video.mp4").write_bytes(b"my holiday video")
    (folder / "frames" / "chunk_00000.npy").write_bytes(b"my data")
    (folder / "state-0001.safetensors").write_bytes(b"my model")
    before = snapshot(folder)
    with pytest.raises(InputError, match="is not empty and holds no framepack run"):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), run_dir=folder)
    with pytest.raises(InputError, match="expected a run directory with state.json"):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), resume=folder)
    (folder / "state.json").write_text("{}")  # looks like a run, but no run of ours marked it
    with pytest.raises(InputError, match=f"no {MARKER_FILE}, so it holds no framepack run"):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), resume=folder)
    assert snapshot(folder) == {**before, "state.json": snapshot(folder)["state.json"]}


def test_a_file_is_not_a_run_directory(pipe, image, tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    for arguments in (dict(run_dir=file), dict(resume=file)):
        with pytest.raises(InputError, match="expected a folder, found a file"):
            pipe.stream(image, "a dancer", GenerationConfig(**FAST), **arguments)
    assert file.read_text() == "keep me"


def test_a_run_of_ours_with_no_finished_section_may_be_reused(tmp_path: Path) -> None:
    claim_run_dir(tmp_path / "run", resume=False).release()
    assert (tmp_path / "run" / MARKER_FILE).exists()
    claim_run_dir(tmp_path / "run", resume=False).release()  # marked, nothing finished: reusable


# --- one run at a time -------------------------------------------------------------------------------
def test_a_second_run_of_a_locked_folder_is_refused(pipe, image, cut: Path) -> None:
    holder = RunDirLock(cut)
    try:
        with pytest.raises(
            InputError, match=rf"run directory {cut} is in use by another framepack run \(pid {os.getpid()}\)"
        ):
            pipe.stream(image, "a dancer", GenerationConfig(**FAST), resume=cut)
    finally:
        holder.release()
    claim_run_dir(cut, resume=True).release()  # free again once the holder let go


def test_a_run_lets_go_of_its_folder_however_it_ends(pipe, image, tmp_path: Path, cut: Path) -> None:
    RunDirLock(cut).release()  # the cancelled run that made it let go
    sections = iter(pipe.stream(image, "a dancer", GenerationConfig(**ONE), run_dir=tmp_path / "run"))
    next(sections)
    with pytest.raises(InputError, match="in use"):
        RunDirLock(tmp_path / "run")
    sections.close()  # given up midway
    RunDirLock(tmp_path / "run").release()


# --- untrusted state.json -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            dict(frame_chunks=["../x.npy"]),
            "expected 'frame_chunks' to be \\['chunk_00000.npy'\\], got \\['../x.npy'\\]",
        ),
        (dict(frame_chunks=["/etc/passwd"]), "frame_chunks"),
        (dict(frame_chunks=["sub/chunk_00000.npy"]), "frame_chunks"),
        (dict(frame_chunks="chunk_00000.npy"), "expected 'frame_chunks' to be a list of file names"),
        (dict(frame_chunks=[0]), "expected 'frame_chunks' to be a list of file names"),
        (dict(tensors="../state-0001.safetensors"), "expected 'tensors' to be 'state-0001.safetensors'"),
        (dict(tensors=["state-0001.safetensors"]), "expected 'tensors' to be 'state-0001.safetensors'"),
        (dict(sections_done="1"), "expected 'sections_done' to be an integer >= 1, got '1'"),
        (dict(sections_done=True), "expected 'sections_done' to be an integer >= 1, got True"),
        (dict(sections_done=-1), "expected 'sections_done' to be an integer >= 1, got -1"),
        (dict(format="1"), "run state format '1', this framepack reads 1"),
        (dict(fingerprint=[1]), "expected 'fingerprint' to be an object"),
    ],
)
def test_a_tampered_state_is_refused_before_any_work(pipe, image, cut: Path, changes: dict, message: str) -> None:
    edit_state(cut, **changes)
    with pytest.raises(InputError, match=message):
        pipe.stream(image, "a dancer", GenerationConfig(**FAST), resume=cut)
    RunDirLock(cut).release()  # the refusal let go of the folder


def test_corrupt_state_files_are_one_error_naming_the_file(pipe, image, cut: Path) -> None:
    config = GenerationConfig(**FAST)
    state = (cut / "state.json").read_bytes()
    (cut / "state.json").write_bytes(state[: len(state) // 2])
    with pytest.raises(InputError, match=f"cannot read the run state {cut / 'state.json'}"):
        pipe.stream(image, "a dancer", config, resume=cut)
    (cut / "state.json").write_bytes(state)

    tensors = cut / "state-0001.safetensors"
    saved = {k: v.clone() for k, v in load_file(tensors).items()}  # not mapped from the file cut below
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(InputError, match=f"cannot read the run state {tensors}"):
        pipe.stream(image, "a dancer", config, resume=cut)
    save_file({k: v for k, v in saved.items() if k != "generator"}, tensors)
    with pytest.raises(
        InputError, match=r"expected the tensors \['history', 'generator', 'frame_count'\], \['generator'\] missing"
    ):
        pipe.stream(image, "a dancer", config, resume=cut)
    save_file({**saved, "frame_count": torch.tensor(2.5)}, tensors)
    with pytest.raises(InputError, match="expected 'frame_count' to be one integer >= 0"):
        pipe.stream(image, "a dancer", config, resume=cut)


def test_a_state_that_disagrees_with_its_frames_is_refused(pipe, image, cut: Path) -> None:
    config = GenerationConfig(**FAST)
    edit_state(cut, frame_chunks=[])  # the frame list emptied: it would report frames it never writes
    with pytest.raises(InputError, match=r"counts 13 frames, but its 0 frame chunk\(s\) and held frames hold 9"):
        pipe.generate(image, "a dancer", config, resume=cut)
    edit_state(cut, frame_chunks=["chunk_00000.npy"])
    np.save(cut / "frames" / "chunk_00000.npy", np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(InputError, match=r"should hold uint8 frames \[n, 64x64, 3\]; it holds uint8 \[4, 32, 32, 3\]"):
        pipe.generate(image, "a dancer", config, resume=cut)
    (cut / "frames" / "chunk_00000.npy").unlink()
    with pytest.raises(InputError, match="frame chunk .*chunk_00000.npy is missing"):
        pipe.generate(image, "a dancer", config, resume=cut)


def test_a_state_with_more_sections_than_the_video_is_refused(pipe, image, cut: Path) -> None:
    (cut / "state-0001.safetensors").rename(cut / "state-0005.safetensors")
    edit_state(cut, sections_done=5, tensors="state-0005.safetensors")
    with pytest.raises(InputError, match="its state counts 5 finished sections of a video of 2"):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), resume=cut)


def test_changed_settings_are_a_short_diff(pipe, image, cut: Path) -> None:
    changed = GenerationConfig(**{**FAST, "steps": 2})
    with pytest.raises(InputError) as refused:
        pipe.generate(image, "a cat", changed, resume=cut)
    assert str(refused.value) == f"cannot resume {cut}: settings differ: prompt changed; steps 1 -> 2"


# --- temporary run folders -------------------------------------------------------------------------
def test_a_temporary_run_folder_goes_with_the_saved_video(pipe, image, tmp_path: Path) -> None:
    video = pipe.generate(image, "a dancer", GenerationConfig(**ONE))
    assert video.temporary and video.run_dir.is_dir()
    video.save(tmp_path / "kept.mp4", keep_run_dir=True)
    assert video.run_dir.is_dir()
    video.save(tmp_path / "a.MP4")  # the suffix in any case
    assert not video.run_dir.exists()
    assert (tmp_path / "kept.mp4").read_bytes() == (tmp_path / "a.MP4").read_bytes()
    with pytest.raises(InputError, match="deleted after save"):
        video.frames()


def test_an_unsaved_temporary_run_folder_goes_with_its_result_and_a_kept_one_stays(pipe, image) -> None:
    video = pipe.generate(image, "a dancer", GenerationConfig(**ONE))
    dropped = video.run_dir
    assert dropped.is_dir()
    del video
    gc.collect()
    assert not dropped.exists()
    video = pipe.generate(image, "a dancer", GenerationConfig(**ONE))
    video.save(video.run_dir.parent / f"{video.run_dir.name}.mp4", keep_run_dir=True)
    kept = video.run_dir
    del video
    gc.collect()
    assert (kept / "video.mp4").exists()
    shutil.rmtree(kept)
    (kept.parent / f"{kept.name}.mp4").unlink()


def test_a_failed_temporary_run_keeps_its_folder_only_if_a_section_finished(pipe, image, caplog, monkeypatch) -> None:
    made: list[Path] = []
    mkdtemp = __import__("tempfile").mkdtemp
    monkeypatch.setattr("tempfile.mkdtemp", lambda **kw: made.append(Path(mkdtemp(**kw))) or str(made[-1]))
    with pytest.raises(GenerationCancelled):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), callback=cancel_in_section(0))
    assert not made[0].exists()
    with caplog.at_level(logging.WARNING, logger="framepack"), pytest.raises(GenerationCancelled):
        pipe.generate(image, "a dancer", GenerationConfig(**FAST), callback=cancel_in_section(1))
    assert (made[1] / "state.json").exists()
    assert f"finished sections are kept in {made[1]}" in caplog.text
    shutil.rmtree(made[1])


# --- where a video may be saved -----------------------------------------------------------------------
def finished(tmp_path: Path, temporary: bool = False) -> VideoResult:
    """A VideoResult over a small finished run directory, no model needed."""
    run_dir = tmp_path / "run"
    frames = FrameAssembler("forward", 0, spool_dir=run_dir / "frames")
    frames.add(torch.zeros(1, 3, 2, 16, 16))
    frames.write_mp4(run_dir / "video.mp4")
    return VideoResult(torch.zeros(1), frames, run_dir, fps=30, crf=16, temporary=temporary)


def test_a_given_run_folder_is_never_deleted(tmp_path: Path) -> None:
    video = finished(tmp_path, temporary=False)
    video.save(tmp_path / "out.mp4")
    video.cleanup()
    assert (tmp_path / "run" / "video.mp4").exists()
    assert len(list(video.frames())) == 2


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("out.avi", "expected a file path ending in .mp4"),
        ("out", "expected a file path ending in .mp4"),
        ("folder.mp4", "is a folder"),
        ("run/video.mp4", "is inside the run directory"),
        ("run/frames/new.mp4", "is inside the run directory"),
        ("missing/out.mp4", "does not exist"),
    ],
)
def test_save_refuses_a_bad_path_before_writing(tmp_path: Path, name: str, message: str) -> None:
    video = finished(tmp_path)
    (tmp_path / "folder.mp4").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match=message):
        video.save(tmp_path / name)
    assert snapshot(tmp_path) == before


def test_save_without_overwrite_keeps_a_file_there_before_or_appearing_during_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = finished(tmp_path, temporary=True)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the video the user had")
    with pytest.raises(OutputExistsError, match=r"^save: expected a new file, but '.*out\.mp4' exists \(or pass"):
        video.save(out, overwrite=False)

    out.unlink()
    copy = shutil.copyfile

    def copy_then_a_users_file(source: Path, target: Path) -> None:
        copy(source, target)
        out.write_bytes(b"a video saved meanwhile")

    monkeypatch.setattr(atomic.shutil, "copyfile", copy_then_a_users_file)
    with pytest.raises(OutputExistsError):
        video.save(out, overwrite=False)
    monkeypatch.undo()
    assert out.read_bytes() == b"a video saved meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "run"]
    assert (video.run_dir / "video.mp4").exists()  # kept: the video is only there

    made = (video.run_dir / "video.mp4").read_bytes()
    video.save(tmp_path / "elsewhere.mp4", overwrite=False)
    assert (tmp_path / "elsewhere.mp4").read_bytes() == made


# --- a full disk ---------------------------------------------------------------------------------------
def failing_after(written: int):  # type: ignore[no-untyped-def]
    """A copy that writes ``written`` bytes of the file, then finds the disk full."""

    def copy(source: Path, target: Path) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[:written])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return copy


def test_a_full_disk_during_save_keeps_the_old_video(tmp_path: Path, monkeypatch) -> None:
    video = finished(tmp_path)
    (tmp_path / "out.mp4").write_bytes(b"the video the user had")
    monkeypatch.setattr(atomic.shutil, "copyfile", failing_after(100))
    with pytest.raises(OutputError, match=f"could not write {tmp_path / 'out.mp4'}: No space left on device"):
        video.save(tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == b"the video the user had"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "run"]
    assert video.run_dir.exists()  # not deleted: the video was not saved


def test_a_full_disk_while_spooling_keeps_the_chunk_there(tmp_path: Path, monkeypatch) -> None:
    spool = tmp_path / "frames"
    spool.mkdir()
    (spool / "chunk_00000.npy").write_bytes(b"an earlier chunk")

    def full_disk(path: Path, array: np.ndarray) -> None:
        Path(path).write_bytes(b"\x93NUMPY half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full_disk)
    frames = FrameAssembler("forward", 0, spool_dir=spool)
    with pytest.raises(OutputError, match="chunk_00000.npy: No space left on device"):
        frames.add(torch.zeros(1, 3, 2, 16, 16))
    assert [p.name for p in spool.iterdir()] == ["chunk_00000.npy"]
    assert (spool / "chunk_00000.npy").read_bytes() == b"an earlier chunk"
