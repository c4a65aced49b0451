"""Every video carries the settings that made it: in its mp4's metadata and as the run's settings.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from framepack import FramePackPipeline, GenerationConfig
from framepack.errors import GenerationCancelled, InputError
from framepack.run_settings import SETTINGS_FILE, file_digest, read_settings
from framepack.video import write_mp4


def test_mp4_writer_keeps_the_comment_tag(tmp_path: Path) -> None:
    text = json.dumps({"prompt": "a dancer – über", "seed": 2**64 - 1})
    path = write_mp4(tmp_path / "x.mp4", np.zeros((2, 16, 16, 3), np.uint8), metadata={"comment": text})
    with av.open(str(path)) as container:
        assert container.metadata["comment"] == text


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, GenerationConfig]:
    """A tiny video made through the API from an image file, saved twice: as made and at another crf."""
    folder = tmp_path_factory.mktemp("made")
    image = folder / "start.png"
    Image.fromarray((np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3)).save(image)
    config = GenerationConfig(seconds=0.1, window=1, steps=1, resolution=32, seed=123, cache="teacache:0.2", shift=2.5)
    video = FramePackPipeline.tiny().generate(
        str(image), "a dancer", config, negative_prompt="blur", run_dir=folder / "run"
    )
    video.save(folder / "out.mp4", keep_run_dir=True)
    video.save(folder / "crf30.mp4", crf=30)
    return folder, image, folder / "out.mp4", config


def test_the_mp4_carries_every_setting_and_input(made: tuple[Path, Path, Path, GenerationConfig]) -> None:
    _, image, out, config = made
    record = read_settings(out)
    assert record["config"] == {
        f.name: getattr(config, f.name) for f in dataclasses.fields(GenerationConfig)
    }  # every field, the new ones included
    assert record["config"]["seed"] == 123 and record["config"]["cache"] == "teacache:0.2"
    assert record["inputs"] == {
        "image": {"path": str(image.absolute()), "digest": file_digest(image)},
        "prompt": "a dancer",
        "negative_prompt": "blur",
        "end_image": None,
        "keyframes": None,
    }
    with av.open(str(out)) as container:  # the size and length the video has
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert record["video"] == {
        "height": frames[0].shape[0],
        "width": frames[0].shape[1],
        "frames": len(frames),
        "sections": 1,
    }
    assert record["models"]["kind"] == "tiny" and record["models"]["seed"] == 0
    assert record["models"]["dtype"] == "torch.float32"
    assert len(record["models"]["weights_digest"]) == 32
    assert record["loras"] == []
    assert record["framepack_version"]


def test_the_run_dir_has_the_same_settings_json(made: tuple[Path, Path, Path, GenerationConfig]) -> None:
    folder, _, out, _ = made
    assert read_settings(folder / "run" / SETTINGS_FILE) == read_settings(out)


def test_a_video_saved_at_another_crf_records_that_crf(made: tuple[Path, Path, Path, GenerationConfig]) -> None:
    folder, _, out, _ = made
    again = read_settings(folder / "crf30.mp4")
    assert again["config"]["crf"] == 30
    assert again | {"config": again["config"] | {"crf": 16}} == read_settings(out)


def test_a_video_without_settings_is_one_clear_error(tmp_path: Path) -> None:
    plain = write_mp4(tmp_path / "plain.mp4", np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="carries no framepack settings"):
        read_settings(plain)
    other = tmp_path / "other.json"
    other.write_text('{"seed": 5}')
    with pytest.raises(InputError, match="expected framepack's settings"):
        read_settings(other)


def test_a_refused_resume_leaves_the_runs_settings_json_as_it_was(tmp_path: Path) -> None:
    pipe = FramePackPipeline.tiny()
    image = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    config = GenerationConfig(seconds=0.2, window=1, steps=1, resolution=32, seed=5)  # two sections

    def stop_in_second_section(progress: object) -> None:
        if progress.section == 1:  # type: ignore[attr-defined]
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        pipe.generate(image, "a dancer", config, run_dir=tmp_path / "cut", callback=stop_in_second_section)
    written = (tmp_path / "cut" / SETTINGS_FILE).read_bytes()
    with pytest.raises(InputError, match="prompt"):
        pipe.generate(image, "a cat", config, resume=tmp_path / "cut")
    assert (tmp_path / "cut" / SETTINGS_FILE).read_bytes() == written
