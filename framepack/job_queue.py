"""A queue of generations that share one pipeline: ``--seeds``, ``--count`` and ``--jobs FILE``.

Each job is the command's arguments with a few changed (a seed, or a jobs file line's keys).
The models load once, for the first job that runs; jobs run in order, each in its own run
directory under the queue folder, each writing its own output. A job that fails is reported
in one line and the queue goes on; the exit status then says so.

The queue folder (``--queue-dir``; default ``JOBS.queue`` beside the jobs file, or ``OUT.queue``
beside ``--out``) holds ``queue.json`` (each job's state, written after every change) and
``runs/NAME-DIGEST/``. The same command run again skips the jobs it finished (their output is
there and ``queue.json`` says the queue made it), resumes an interrupted job from its last
finished section, and retries failed ones. A job whose arguments changed gets a new run folder.
An output the queue did not make is never overwritten: that job fails instead.

Output names: ``--seeds``/``--count`` write ``OUT-seedS.mp4``; a jobs file line writes its own
``"out"``, else ``OUT-lineN.mp4``; both together ``…-lineN-seedS.mp4``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_bytes
from .config import GenerationConfig
from .errors import InputError, OutputExistsError
from .rundir import RunDirLock
from .runstate import STATE_FILE

QUEUE_FILE = "queue.json"
_FORMAT = 1
# Arguments a job may not set: the queue's own, and the models', which load once for all jobs
# (the mode picks the transformer).
QUEUE_ARGUMENTS = (
    "jobs", "seeds", "count", "queue_dir", "run_dir", "resume", "from_settings", "verbose", "debug", "parallel",
)  # fmt: skip
# What the command keeps beside the arguments (argparse's subcommand and function, main's notes).
_BOOKKEEPING = ("command", "run", "typed", "run_dir_used", "queue_dir_used")
# What leaves the video's bits as they are: placement (another device type or compiled blocks do
# not) and whether an existing output may be replaced.
SAME_VIDEO_ARGUMENTS = ("vram_budget", "mmap", "overwrite")
MODEL_SETTINGS = ("mode",)  # picks the transformer (i2v or f1), so it is the queue's too
LIST_ARGUMENTS = ("keyframe",)  # repeatable flags: a list, as argparse gives them
TEXT_ARGUMENTS = ("prompt", "negative_prompt", "image", "end_image", "out", "cache")


@dataclass(frozen=True)
class Job:
    name: str  # "line3", "seed7", "line3-seed7": names its run folder and its entry in queue.json
    where: str  # what a message names: "jobs.jsonl line 3", "--seeds 7"
    changes: dict[str, Any]  # arguments that differ from the command's, "out" included


def is_queue(args: argparse.Namespace) -> bool:
    return args.jobs is not None or args.seeds is not None or args.count is not None


def plan_jobs(args: argparse.Namespace, allowed: set[str], model_arguments: Iterable[str]) -> list[Job]:
    """The jobs of the command, in order; raises InputError for a bad jobs file or seed list."""
    if args.run_dir is not None or args.resume is not None:
        raise InputError("--run-dir/--resume: a queue keeps each job's run folder in --queue-dir")
    seeds = _seeds(args)
    out = Path(args.out)
    lines = [(f"line{n}", where, changes) for n, where, changes in read_jobs(args.jobs, allowed, model_arguments)]
    if args.jobs is None:
        lines = [("", "", {})]
    jobs = []
    for name, where, changes in lines:
        target = Path(changes.get("out", out.with_name(f"{out.stem}-{name}{out.suffix}") if name else out))
        for seed in seeds if seeds is not None else [None]:
            job_changes = dict(changes, out=str(target))
            job_name, job_where = name, where
            if seed is not None:
                job_changes |= {"seed": seed, "out": str(target.with_name(f"{target.stem}-seed{seed}{target.suffix}"))}
                job_name = f"{name}-seed{seed}" if name else f"seed{seed}"
                job_where = f"{where} seed {seed}" if where else f"seed {seed}"
            jobs.append(Job(job_name, job_where, job_changes))
    _check_distinct_outputs(jobs)
    return jobs


def _seeds(args: argparse.Namespace) -> list[int] | None:
    if args.seeds is not None and args.count is not None:
        raise InputError("--seeds and --count: give one")
    if args.count is not None:
        if args.count < 1:
            raise InputError(f"--count: expected a number of videos >= 1, got {args.count}")
        return [args.seed + i for i in range(args.count)]
    if args.seeds is None:
        return None
    try:
        seeds = [int(part) for part in args.seeds.split(",")]
    except ValueError:
        raise InputError(f"--seeds: expected integers separated by commas like 1,2,3, got {args.seeds!r}") from None
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: each seed once, got {args.seeds!r}")
    return seeds


def read_jobs(path: str | None, allowed: set[str], model_arguments: Iterable[str]) -> list[tuple[int, str, dict]]:
    """(line number, where, arguments) of every non-blank line of a jobs file (JSON Lines).

    Keys are the generate flags' names (``--end-image``: ``end_image`` or ``end-image``) or
    ``GenerationConfig`` fields. Raises InputError naming the line and key of the first fault.
    """
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--jobs: cannot read {path}: {error}") from None
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise InputError(f"--jobs {where}: not valid JSON ({error})") from None
        if not isinstance(entry, dict):
            raise InputError(f"--jobs {where}: expected a JSON object of generate arguments, got {line.strip():.60}")
        changes = {key.replace("-", "_"): value for key, value in entry.items()}
        for key, value in changes.items():
            if key in model_arguments or key in QUEUE_ARGUMENTS + MODEL_SETTINGS:
                raise InputError(
                    f"--jobs {where}: {key!r} is the queue's (the models load once for every job); "
                    "give it on the command line"
                )
            if key not in allowed:
                raise InputError(f"--jobs {where}: unknown key {key!r}; expected generate arguments like prompt, seed")
            if key in TEXT_ARGUMENTS and not isinstance(value, str):
                raise InputError(f"--jobs {where}: {key!r} expected a string, got {value!r:.40}")
            if key in LIST_ARGUMENTS and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise InputError(f"--jobs {where}: {key!r} expected a list of strings, got {value!r:.40}")
        jobs.append((number, where, changes))
    if not jobs:
        raise InputError(f"--jobs: {path} holds no job (one JSON object per line)")
    return jobs


def _check_distinct_outputs(jobs: list[Job]) -> None:
    seen: dict[Path, Job] = {}
    for job in jobs:
        out = Path(job.changes["out"]).absolute()
        if out in seen:
            raise InputError(f'{seen[out].where} and {job.where} both write {out}; give each its own "out"')
        seen[out] = job


def default_queue_dir(args: argparse.Namespace) -> Path:
    anchor = Path(args.jobs if args.jobs is not None else args.out)
    return anchor.with_name(f"{anchor.stem}.queue")


class QueueState:
    """``queue.json``: for each job its arguments' digest, status and output, and every output
    the queue ever wrote (``outputs``, less any it found taken by another file); saved on every change."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / QUEUE_FILE
        self.jobs: dict[str, dict[str, Any]] = {}
        self.outputs: list[str] = []
        if self.path.exists():
            try:
                record = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise InputError(f"cannot read the queue state {self.path}: {error}") from None
            if (
                not isinstance(record, dict)
                or record.get("format") != _FORMAT
                or not isinstance(record.get("jobs"), dict)
            ):
                raise InputError(f"{self.path}: expected a framepack queue state of format {_FORMAT}")
            for name, entry in record["jobs"].items():
                if not isinstance(entry, dict) or not isinstance(entry.get("out", ""), str):
                    raise InputError(
                        f'{self.path}: expected job {name!r} as an object with an "out" path, got {entry!r:.60}'
                    )
            outputs = record.get("outputs", [])  # queues saved before the list: their finished jobs' outputs
            if not isinstance(outputs, list) or not all(isinstance(out, str) for out in outputs):
                raise InputError(f'{self.path}: expected "outputs" as a list of paths, got {outputs!r:.60}')
            self.jobs = record["jobs"]
            done = [e["out"] for e in self.jobs.values() if e.get("status") == "done" and "out" in e]
            self.outputs = list(dict.fromkeys([*outputs, *done]))

    def set(self, name: str, *, writing: bool = False, **entry: Any) -> None:
        """Note job ``name``'s entry. ``writing``: the job is about to write its ``out``, which joins
        the outputs in the same write: a queue killed between writing it and noting the job done
        still knows the output as its own."""
        self.jobs[name] = entry
        if writing and entry["out"] not in self.outputs:
            self.outputs.append(entry["out"])
        record = {"format": _FORMAT, "jobs": self.jobs, "outputs": self.outputs}
        write_bytes(self.path, json.dumps(record, indent=1).encode("utf-8"))

    def disown(self, out: Path) -> None:
        """Forget ``out`` as an output (noted on the next ``set``): the file there is someone else's."""
        self.outputs = [made for made in self.outputs if made != str(out.absolute())]

    def made(self, out: Path) -> bool:
        """Whether the queue (may have) wrote ``out``, so that a job of it may write it again."""
        return str(out.absolute()) in self.outputs


def job_arguments(args: argparse.Namespace, job: Job) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | job.changes))


def arguments_digest(args: argparse.Namespace) -> str:
    """What the job makes: every argument but the queue's own, the command's bookkeeping and
    those that change how, not what, it runs."""
    left_out = QUEUE_ARGUMENTS + _BOOKKEEPING + SAME_VIDEO_ARGUMENTS
    kept = {k: v for k, v in vars(args).items() if k not in left_out}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def run_queue(
    args: argparse.Namespace,
    jobs: list[Job],
    load: Callable[[argparse.Namespace, GenerationConfig], Any],
    config_of: Callable[[argparse.Namespace], GenerationConfig],
    run_job: Callable[[Any, argparse.Namespace, GenerationConfig], Path],
    report: Callable[[BaseException], tuple[str, int]],
    log: Callable[[str], None],
    log_error: Callable[[str], None],
) -> int:
    """Run ``jobs`` in order; returns 0 when all are done, else the worst failure's exit status.

    ``load`` makes the pipeline (once, for the first job that runs), ``config_of`` checks a job's
    arguments into its config, ``run_job`` runs one into its output, ``report`` turns an error into
    its one line and exit status, ``log`` prints a line for the user and ``log_error`` a job's error line.
    """
    folder = Path(args.queue_dir) if args.queue_dir is not None else default_queue_dir(args)
    try:
        (folder / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--queue-dir: cannot create {folder}: {error.strerror or error}") from None
    lock = RunDirLock(folder)  # one process per queue: a second one would run the same jobs
    args.queue_dir_used = folder  # where an interrupt's message points
    try:
        state = QueueState(folder)
        pipe, failures, skipped = None, [], 0
        for job in jobs:
            job_args = job_arguments(args, job)
            digest, out = arguments_digest(job_args), Path(job_args.out).absolute()
            entry = state.jobs.get(job.name, {})
            if entry.get("status") == "done" and entry.get("digest") == digest and out.exists():
                skipped += 1
                continue
            run_dir = folder / "runs" / f"{job.name or 'job'}-{digest}"  # changed arguments: a new folder
            resume = (run_dir / STATE_FILE).exists()
            job_args.run_dir, job_args.resume = (None, run_dir) if resume else (run_dir, None)
            try:
                if out.exists() and not (state.made(out) or job_args.overwrite):
                    raise InputError(
                        f"--out {out} exists and was not made by this queue; move it, give another out or --overwrite"
                    )
                # The queue's own output (or one --overwrite lets go) is replaced; a new name is
                # published only where no file appears meanwhile (framepack.atomic.publish_new).
                job_args.overwrite = job_args.overwrite or out.exists()
                config = config_of(job_args)
            except Exception as error:
                failures.append(_failed(state, job, digest, out, report(error), log_error))
                continue
            if pipe is None:  # for the first job that runs; a failure ends the queue: every job needs the models
                pipe = load(args, config)  # its resolution and window size a memory plan
            state.set(job.name, writing=True, digest=digest, status="running", out=str(out))
            args.run_dir_used = run_dir  # where an interrupt's message points
            log(f"job {job.where}: {'resuming ' if resume else ''}{out}")
            try:
                run_job(pipe, job_args, config)
            except Exception as error:  # this job's fault; an interrupt ends the queue (run it again to resume)
                if isinstance(error, OutputExistsError):  # a file appeared at out: not the queue's to replace later
                    state.disown(out)
                failures.append(_failed(state, job, digest, out, report(error), log_error))
                continue
            state.set(job.name, digest=digest, status="done", out=str(out))
        done = len(jobs) - len(failures)
        log(f"queue {folder}: {done} of {len(jobs)} jobs done ({skipped} before this run), {len(failures)} failed")
        return max(failures, default=0)
    finally:
        lock.release()


def _failed(
    state: QueueState,
    job: Job,
    digest: str,
    out: Path,
    reported: tuple[str, int],
    log_error: Callable[[str], None],
) -> int:
    """Report a failed job in one line (``reported``: its message and exit status) and note it;
    returns its exit status."""
    message, status = reported
    log_error(f"error: job {job.where}: {message}")
    state.set(job.name, digest=digest, status="failed", out=str(out), error=message)
    return status
