"""tests/forked_command.py reports a forked command line as Python would run it."""

from __future__ import annotations

import os
from pathlib import Path

from tests.forked_command import CommandServer


def test_a_forked_command_has_its_own_argv_folder_exit_status_and_output(tmp_path: Path) -> None:
    show = "import os, sys; print(sys.argv, os.getcwd(), __name__); sys.exit(3)"
    server = CommandServer(os.environ, forget=())
    try:
        shown, failed, killed = server.run(
            [
                (["-c", show, b"\xff dancing"], tmp_path),
                (["-c", "raise ValueError('boom')"], tmp_path),
                (["-c", "import time; time.sleep(600)"], tmp_path),
            ],
            workers=3,
            timeout=8,  # far above a fork and a print on a loaded machine, far below the sleep
        )
    finally:
        server.close()
    assert (shown.returncode, shown.stderr) == (3, "")
    assert shown.stdout == f"['-c', '\\udcff dancing'] {tmp_path} __main__\n"  # bytes decoded as Python does
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("Traceback") and failed.stderr.endswith("ValueError: boom\n")
    assert killed.returncode == -9 and killed.seconds < 60
