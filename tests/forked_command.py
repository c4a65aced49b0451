"""Python command lines in processes of their own, without a Python and torch start-up for each.

A test that runs the command as a user does (``python -m framepack.cli ...``) spends seconds
starting Python and importing torch, and milliseconds in the command. ``CommandServer`` starts
one fresh Python that imports what the commands need once; each command line then runs in a
fork of it: a process of its own, with its own working folder, argv (the command line's bytes,
decoded as Python decodes a real one), stdin (empty), stdout, stderr and exit status, running
its ``-m`` module, ``-c`` code or script as ``__main__`` the way ``python`` does. The imports
are the only thing it shares: a fresh interpreter's import of the package is what
tests/test_package.py checks in subprocesses of their own.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import pkgutil
import runpy
import select
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Finished:
    """How one command line ended, as ``subprocess.run`` would report it."""

    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str  # undecodable bytes as backslash escapes
    seconds: float  # from the fork to the exit


class CommandServer:
    """One warm Python that forks a process for each command line it is given.

    ``env`` is the commands' environment (the server's own: imports read it once). The server
    imports every module of the framepack package before it forks (importing is most of a
    command's own time too, where bytecode is not cached); then it forgets the modules named
    in ``forget`` (the package keeps them as attributes no more either), so that ``-m`` runs
    one afresh as ``__main__`` and a later import of it imports it again, as in a fresh Python.
    """

    def __init__(self, env: Mapping[str, str], forget: Sequence[str] = ("framepack.cli",)) -> None:
        path = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        self._process = subprocess.Popen(
            [sys.executable, "-c", f"from tests.forked_command import _serve; _serve({list(forget)!r})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env={**env, "PYTHONPATH": path}, text=True,
        )  # fmt: skip

    def run(
        self, commands: Sequence[tuple[Sequence[str | bytes], Path]], workers: int = 2, timeout: float = 300
    ) -> list[Finished]:
        """Run each ``(python arguments, working folder)``, ``workers`` at a time; one result each, in order.

        The arguments are what follows ``python`` on a command line: ``-m module ...``,
        ``-c code ...`` or ``script.py ...``. A command past ``timeout`` seconds is killed.
        """
        with tempfile.TemporaryDirectory(prefix="forked-") as outputs:
            jobs = [
                dict(
                    argv=[os.fsencode(a).hex() for a in arguments],
                    cwd=str(folder),
                    stdout=os.path.join(outputs, f"{i}.out"),
                    stderr=os.path.join(outputs, f"{i}.err"),
                )
                for i, (arguments, folder) in enumerate(commands)
            ]
            self._process.stdin.write(json.dumps(dict(jobs=jobs, workers=workers, timeout=timeout)) + "\n")
            self._process.stdin.flush()
            reply = self._process.stdout.readline()
            assert reply, f"the command server ended (status {self._process.poll()})"
            ended = json.loads(reply)
            return [
                Finished(
                    returncode=status,
                    stdout=Path(job["stdout"]).read_bytes().decode("utf-8", "backslashreplace"),
                    stderr=Path(job["stderr"]).read_bytes().decode("utf-8", "backslashreplace"),
                    seconds=seconds,
                )
                for job, (status, seconds) in zip(jobs, ended)
            ]

    def close(self) -> None:
        self._process.stdin.close()  # the server ends at the end of its input
        self._process.wait(timeout=60)


# --- the server's side ------------------------------------------------------------------------


def _serve(forget: list[str]) -> None:
    import framepack

    for module in pkgutil.walk_packages(framepack.__path__, "framepack."):
        importlib.import_module(module.name)
    for name in forget:
        package, _, attribute = name.rpartition(".")
        del sys.modules[name]
        if package and hasattr(sys.modules[package], attribute):
            delattr(sys.modules[package], attribute)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(_run_all(request["jobs"], request["workers"], request["timeout"])), flush=True)


def _run_all(jobs: list[dict], workers: int, timeout: float) -> list[tuple[int, float]]:
    """Fork each job, at most ``workers`` alive at a time; its (exit status, seconds), in order."""
    ended: dict[int, tuple[int, float]] = {}
    running: dict[int, tuple[int, float]] = {}  # pid -> (job index, start)
    waiting = list(range(len(jobs)))
    while waiting or running:
        while waiting and len(running) < workers:
            index = waiting.pop(0)
            sys.stdout.flush()  # nothing of the server's own output may reach a child's
            start = time.monotonic()
            pid = os.fork()
            if pid == 0:
                _child(**jobs[index])
            running[pid] = (index, start)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            index, start = running.pop(pid)
            ended[index] = (os.waitstatus_to_exitcode(status), time.monotonic() - start)
            continue
        for pid, (_, start) in running.items():
            if time.monotonic() - start > timeout:
                os.kill(pid, 9)
        select.select([], [], [], 0.01)
    return [ended[i] for i in range(len(jobs))]


def _child(argv: list[str], cwd: str, stdout: str, stderr: str) -> None:
    """In the fork: become ``python <argv>`` in ``cwd`` and exit as it would."""
    status = 1
    try:
        os.chdir(cwd)
        for fd, path, flags in [
            (0, os.devnull, os.O_RDONLY),
            (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ]:
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        # Python decodes a command line's bytes with the file system encoding and surrogateescape.
        status = _python([os.fsdecode(bytes.fromhex(a)) for a in argv])
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _python(arguments: list[str]) -> int:
    """What ``python <arguments>`` does once started: sys.argv, sys.path[0], ``__main__``."""
    first, *rest = arguments
    if first == "-m":
        sys.argv = ["-m", *rest[1:]]  # run_module puts the module's file in argv[0], as python -m does
        sys.path[0] = os.getcwd()
        runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
    elif first == "-c":
        sys.argv = ["-c", *rest[1:]]
        sys.path[0] = ""
        exec(compile(rest[0], "<string>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    elif not first.startswith("-"):
        sys.argv = [first, *rest]
        sys.path[0] = os.path.dirname(os.path.abspath(first))
        runpy.run_path(first, run_name="__main__")
    else:
        raise ValueError(f"forked_command runs -m, -c or a script, got option {first!r}")
    return 0


def _exit_status(code: object) -> int:
    """The exit status Python gives ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1
