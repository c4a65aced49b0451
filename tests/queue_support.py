"""Helpers of the --from and queue tests: the fastest tiny run, and what a run or video holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from framepack.runstate import load_run_state
from framepack.video import FrameAssembler

# One latent frame per section at 32x32 pixels, one step: a section in about a second on a CPU.
FAST = ["--tiny", "--window", "1", "--steps", "1", "--resolution", "32"]
ONE_SECTION = [*FAST, "--seconds", "0.1"]
TWO_SECTIONS = [*FAST, "--seconds", "0.2"]


def run_frames(run_dir: Path) -> np.ndarray:
    """The uint8 frames a finished run saved in its run directory, in temporal order (before any encode)."""
    saved = load_run_state(run_dir)
    settings = saved.fingerprint["settings"]
    assembler = FrameAssembler(settings["mode"], 4 * settings["window"] - 3, spool_dir=run_dir / "frames")
    assembler.restore(saved.tensors.get("held_frames"), int(saved.tensors["frame_count"]), saved.frame_chunks)
    return np.stack(list(assembler.frames()))
