"""LoRAs through the pipeline and the command: the memory plan counts them, a resumed run must
have the same LoRAs at the same strengths, and a bad --lora is one error line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cli import demo_image, main
from framepack.components import tiny_components
from framepack.errors import GenerationCancelled, InputError
from framepack.runstate import load_run_state
from framepack.sampling.loop import Progress
from tests.lora_support import save_lora, write_lora

FAST = dict(window=3, steps=2, resolution=64, seconds=0.8)  # two sections
CLI_FAST = ["--tiny", "--seconds", "0.8", "--window", "3", "--steps", "2", "--resolution", "64"]
IMAGE = demo_image(64)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tensors, _ = write_lora("kohya-hunyuanvideo", seed=1)
    return save_lora(tmp_path_factory.mktemp("loras") / "motion.safetensors", tensors)


def test_add_lora_replans_memory_with_the_larger_blocks(lora_file: Path) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    before = pipe.set_vram_budget(0.05, resolution=64, window=3).streaming["transformer"].block_bytes
    name = pipe.add_lora(lora_file, strength=0.5)
    after = pipe._placement.plan.streaming["transformer"].block_bytes
    assert name == "motion" and pipe._budget_arguments == (0.05, 64, 3)
    assert after[1] > before[1] and after[2] > before[2] and after[0] == before[0]  # double 1 and single 0 grew
    pipe.set_lora_strength(name, 0.25)
    assert [(e.name, e.strength) for e in pipe.components.transformer.loras()] == [("motion", 0.25)]
    pipe.remove_lora(name)
    assert pipe._placement.plan.streaming["transformer"].block_bytes == before


def test_from_pretrained_applies_loras_before_planning(lora_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import framepack.pipeline

    def tiny_load(**kwargs: object) -> object:  # the tiny components stand for the checkpoints
        return tiny_components(0)

    monkeypatch.setattr(framepack.pipeline, "load_components", tiny_load)
    pipe = FramePackPipeline.from_pretrained(
        "unused", device="cpu", vram_budget_gb=0.05, resolution=64, window=3, loras=[(lora_file, 0.5)]
    )
    assert [(e.name, e.strength) for e in pipe.components.transformer.loras()] == [("motion", 0.5)]
    plain = FramePackPipeline.tiny(seed=0)
    plain.set_vram_budget(0.05, resolution=64, window=3)
    planned = pipe._placement.plan.streaming["transformer"].block_bytes
    assert planned[1] > plain._placement.plan.streaming["transformer"].block_bytes[1]  # the plan counts the pairs


def cut_run(pipe: FramePackPipeline, run_dir: Path) -> None:
    def cancel(progress: Progress) -> None:
        if progress.section == 1:
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        pipe.generate(IMAGE, "a dancer", GenerationConfig(**FAST), run_dir=run_dir, callback=cancel)


def test_resume_refuses_another_lora_or_strength(lora_file: Path, tmp_path: Path) -> None:
    pipe = FramePackPipeline.tiny(seed=0)
    pipe.add_lora(lora_file, strength=0.5)
    cut_run(pipe, tmp_path / "cut")
    pipe.set_lora_strength("motion", 0.8)
    with pytest.raises(InputError, match=r"settings differ: loras \[.*'strength': 0\.5.*\] -> \[.*'strength': 0\.8"):
        pipe.generate(IMAGE, "a dancer", GenerationConfig(**FAST), resume=tmp_path / "cut")
    other, _ = write_lora("kohya-hunyuanvideo", seed=2)
    changed = FramePackPipeline.tiny(seed=0)
    changed.add_lora(save_lora(tmp_path / "motion.safetensors", other), strength=0.5)  # same name and strength
    with pytest.raises(InputError, match=r"loras \["):
        changed.generate(IMAGE, "a dancer", GenerationConfig(**FAST), resume=tmp_path / "cut")
    with pytest.raises(InputError, match=r"loras \[.*\] -> \(none\)"):
        FramePackPipeline.tiny(seed=0).generate(IMAGE, "a dancer", GenerationConfig(**FAST), resume=tmp_path / "cut")
    pipe.set_lora_strength("motion", 0.5)
    resumed = pipe.generate(IMAGE, "a dancer", GenerationConfig(**FAST), resume=tmp_path / "cut")
    assert resumed.num_frames == 4 * (2 * 3 + 1) - 3


def test_cli_lora_changes_the_tiny_video(lora_file: Path, tmp_path: Path) -> None:
    plain, styled = tmp_path / "plain.mp4", tmp_path / "styled.mp4"
    assert main(["generate", *CLI_FAST, "--out", str(plain), "--run-dir", str(tmp_path / "a")]) == 0
    args = ["--lora", f"{lora_file}:4", "--lora", str(lora_file)]  # stacked: the same file twice
    assert main(["generate", *CLI_FAST, *args, "--out", str(styled), "--run-dir", str(tmp_path / "b")]) == 0
    assert plain.read_bytes() != styled.read_bytes()
    digest = hashlib.sha256(lora_file.read_bytes()).hexdigest()
    saved = load_run_state(tmp_path / "b").fingerprint["loras"]
    assert saved == [{"digest": digest, "strength": 4.0}, {"digest": digest, "strength": 1.0}]
    assert "loras" not in load_run_state(tmp_path / "a").fingerprint  # runs without LoRAs keep their old fingerprint


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "/no/such/lora.safetensors",
            "error: --lora '/no/such/lora.safetensors': LoRA file '/no/such/lora.safetensors' does not exist",
        ),
        ("{file}:nan", "error: --lora '{file}:nan': expected PATH[:STRENGTH] with a finite strength, got 'nan'"),
        ("{bad}:0.5", "error: {bad}: unrecognised LoRA format: first keys ['model.layer.weight']"),
    ],
)
def test_bad_lora_is_one_error_line(spec: str, message: str, lora_file: Path, tmp_path: Path, capsys) -> None:
    bad = save_lora(tmp_path / "bad.safetensors", {"model.layer.weight": torch.zeros(2, 2)})
    fill = dict(file=lora_file, bad=bad)
    assert main(["generate", *CLI_FAST, "--lora", spec.format(**fill), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(**fill)), err
    assert "Traceback" not in err and err.count("\n") == 1
