"""Every example runs offline with --tiny and writes an mp4."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.forked_command import CommandServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def server() -> Iterator[CommandServer]:
    """Each example runs as ``python examples/x.py`` in a process of its own, forked from one warm Python."""
    server = CommandServer(os.environ, forget=())
    yield server
    server.close()


@pytest.mark.parametrize(
    "name", ["image_to_video", "forward_f1", "end_frame", "low_vram", "custom_cache_policy", "own_weights"]
)
def test_example_runs_with_tiny(name: str, tmp_path: Path, server: CommandServer) -> None:
    out = tmp_path / f"{name}.mp4"
    [done] = server.run([([str(EXAMPLES / f"{name}.py"), "--tiny", "--out", str(out)], tmp_path)], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.stat().st_size > 1000


def test_transformer_step_example_runs(tmp_path: Path, server: CommandServer) -> None:
    [done] = server.run([([str(EXAMPLES / "transformer_step.py")], tmp_path)], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "velocity (1, 16, 3, 16, 16)" in done.stdout
