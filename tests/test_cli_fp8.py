"""framepack generate --fp8: the tiny demo runs with fp8 transformer blocks, and a run made so
is told apart from one made without (its weights differ, so a resume without --fp8 is refused)."""

from __future__ import annotations

from pathlib import Path

from framepack.cli import main
from tests.test_cli import FAST, frame_count


def test_generate_tiny_fp8_writes_a_video_and_resume_needs_the_same_weights(tmp_path: Path, capsys) -> None:
    out, run_dir = tmp_path / "out.mp4", tmp_path / "run"
    assert main(["generate", *FAST, "--fp8", "--prompt", "a dancer", "--out", str(out), "--run-dir", str(run_dir)]) == 0
    assert frame_count(out) == 4 * (2 * 3 + 1) - 3
    capsys.readouterr()
    plain = ["generate", *FAST, "--prompt", "a dancer", "--out", str(tmp_path / "b.mp4"), "--resume", str(run_dir)]
    assert main(plain) == 2
    assert "settings differ: weights changed" in capsys.readouterr().err
