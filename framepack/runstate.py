"""What a run directory keeps after each finished section, so a run can be resumed.

After every section the pipeline saves the latent history, the noise generator's state
and any pixel state still waiting to be blended, together with a fingerprint of the
inputs and settings. Resuming checks the fingerprint and continues from the next section;
because the generator state is restored exactly, the result is bit-identical to a run
that was never interrupted.

Writes are crash-safe: tensors go to a new numbered file, then ``state.json`` is replaced
atomically to point at it, so an interrupted save leaves the previous state intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import InputError

STATE_FILE = "state.json"
_FORMAT = 1


@dataclass
class RunState:
    fingerprint: dict[str, Any]
    sections_done: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    frame_chunks: list[str] = field(default_factory=list)  # finished-frame files, in generation order


def digest(*parts: bytes | str | torch.Tensor | None) -> str:
    """A short sha256 of inputs (image bytes, prompt text, tensors) for fingerprints."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"\x00none")
        elif isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{list(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(part, str):
            h.update(part.encode("utf-8"))
        else:
            h.update(part)
        h.update(b"\x1f")
    return h.hexdigest()[:32]


def save_run_state(run_dir: str | Path, state: RunState) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors_name = f"state-{state.sections_done:04d}.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
    save_file(tensors, run_dir / f"{tensors_name}.tmp")
    os.replace(run_dir / f"{tensors_name}.tmp", run_dir / tensors_name)
    record = {
        "format": _FORMAT,
        "fingerprint": state.fingerprint,
        "sections_done": state.sections_done,
        "tensors": tensors_name,
        "frame_chunks": state.frame_chunks,
    }
    tmp = run_dir / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, run_dir / STATE_FILE)
    for old in run_dir.glob("state-*.safetensors"):
        if old.name != tensors_name:
            old.unlink()


def load_run_state(run_dir: str | Path) -> RunState | None:
    """The saved state of ``run_dir``, or None when no section has finished there yet."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != _FORMAT:
            raise InputError(f"{path}: run state format {record.get('format')!r}, this framepack reads {_FORMAT}")
        tensors = load_file(run_dir / record["tensors"])
        return RunState(record["fingerprint"], int(record["sections_done"]), tensors, list(record["frame_chunks"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot read the run state in {run_dir}: {e}") from e


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], run_dir: str | Path) -> None:
    """Raise InputError naming every input or setting that differs from the saved run."""
    names = sorted(set(saved) | set(current))
    differ = [n for n in names if saved.get(n) != current.get(n)]
    if differ:
        details = "; ".join(f"{n}: saved {saved.get(n)!r}, now {current.get(n)!r}" for n in differ)
        raise InputError(f"cannot resume {run_dir}: inputs or settings differ from the saved run ({details})")
