"""Every example runs offline with --tiny and writes an mp4."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    "name", ["image_to_video", "forward_f1", "end_frame", "low_vram", "custom_cache_policy", "own_weights"]
)
def test_example_runs_with_tiny(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.mp4"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--tiny", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.stat().st_size > 1000


def test_transformer_step_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "transformer_step.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "velocity (1, 16, 3, 16, 16)" in done.stdout
