"""The command line on settings that overflow: one error line, a failing exit code, no video.

Each case runs ``python -m framepack.cli`` in its own process, as a user would (forked from one
warm Python, tests/forked_command.py); the three run side by side, one thread each.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.forked_command import CommandServer

FAST = ["--tiny", "--seconds", "0.8", "--window", "3", "--steps", "2", "--resolution", "64", "--prompt", "a dancer"]
CASES = {
    # 1000 x 1e38 overflows float32 in the guidance embedding: NaN from the first step
    "distilled": ["--distilled-cfg", "1e38"],
    # the guided velocity is ~1e38, finite; the step after it overflows (the prompt and the empty
    # negative prompt must differ, else real CFG adds 1e38 x 0)
    "real_cfg": ["--real-cfg", "1e38"],
    # the same overflow in forward mode, through a cache policy
    "forward_teacache": ["--distilled-cfg", "1e38", "--mode", "forward", "--cache", "teacache"],
}


def test_overflowing_settings_fail_with_one_line_and_leave_the_output_alone(tmp_path: Path) -> None:
    existing = tmp_path / "real_cfg.mp4"
    existing.write_bytes(b"an earlier video")  # must survive a failed run
    server = CommandServer({**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # --overwrite: the user lets the earlier video go: a failed run must still keep it
        commands = [
            (["-m", "framepack.cli", "generate", *FAST, *arguments, "--out", str(tmp_path / f"{name}.mp4"), "--overwrite"],
             tmp_path)
            for name, arguments in CASES.items()
        ]  # fmt: skip
        ended = dict(zip(CASES, server.run(commands, workers=3, timeout=300)))
    finally:
        server.close()
    for name, done in ended.items():
        err = done.stderr  # decoded from bytes: text mode would turn the bar's \r into \n
        assert done.returncode == 1, (name, done.returncode, err)  # a fault, not bad input (2)
        assert "Traceback" not in err, name
        # stderr: the progress bar's one line (redrawn with carriage returns), then the error
        lines = err.rstrip("\n").split("\n")
        assert lines[-1].startswith("error: section 1/2") and "inf or NaN" in lines[-1], (name, err)
        assert all("\r" in line for line in lines[:-1]), (name, err)
        assert sum(line.startswith("error:") for line in lines) == 1, (name, err)
    assert not (tmp_path / "distilled.mp4").exists() and not (tmp_path / "forward_teacache.mp4").exists()
    assert existing.read_bytes() == b"an earlier video"
