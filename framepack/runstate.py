"""What a run directory keeps after each finished section, so a run can be resumed.

After every section the pipeline saves the latent history, the noise generator's state
and any pixel state still waiting to be blended, together with a fingerprint of the
inputs and settings. Resuming checks the fingerprint and continues from the next section;
because the generator state is restored exactly, the result is bit-identical to a run
that was never interrupted.

Writes are crash-safe: tensors go to a new numbered file, then ``state.json`` is replaced
atomically to point at it, so an interrupted save leaves the previous state intact.

Reading trusts nothing: ``state.json`` may have been edited, truncated or copied from
elsewhere. Every value is type-checked, and only plain file names of the expected patterns
are followed (never ``../x`` or an absolute path), so a state cannot point outside its folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import replacing, write_bytes
from .errors import InputError, OutputError
from .video.blending import chunk_name

STATE_FILE = "state.json"
_FORMAT = 1
_TENSORS_NAME = re.compile(r"state-[0-9]{4,}\.safetensors")
_REQUIRED_TENSORS = ("history", "generator", "frame_count")


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
    tensors_name = tensors_file(state.sections_done)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
    with replacing(run_dir / tensors_name) as temp:
        try:
            save_file(tensors, temp)
        except SafetensorError as error:  # its write errors are not OSErrors
            raise OutputError(f"could not write {run_dir / tensors_name}: {error}") from error
    record = {
        "format": _FORMAT,
        "fingerprint": state.fingerprint,
        "sections_done": state.sections_done,
        "tensors": tensors_name,
        "frame_chunks": state.frame_chunks,
    }
    write_bytes(run_dir / STATE_FILE, json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
    for old in run_dir.glob("state-*.safetensors"):
        if old.name != tensors_name:
            old.unlink()


def tensors_file(sections_done: int) -> str:
    """The name of the tensors file saved after ``sections_done`` sections."""
    return f"state-{sections_done:04d}.safetensors"


def load_run_state(run_dir: str | Path) -> RunState | None:
    """The saved state of ``run_dir``, or None when no section has finished there yet.

    Raises InputError, naming the file, for anything but a state this framepack wrote.
    """
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
        raise InputError(f"cannot read the run state {path}: {error}") from error
    record = _check_record(record, path)
    tensors = _load_tensors(run_dir / record["tensors"])
    return RunState(record["fingerprint"], record["sections_done"], tensors, record["frame_chunks"])


def _check_record(record: Any, path: Path) -> dict[str, Any]:
    def bad(what: str, value: Any) -> InputError:
        return InputError(f"{path}: expected {what}, got {_short(value)}")

    if not isinstance(record, dict):
        raise bad("a JSON object", record)
    version = record.get("format")
    if version != _FORMAT or isinstance(version, bool):
        raise InputError(f"{path}: run state format {version!r}, this framepack reads {_FORMAT}")
    if not isinstance(record.get("fingerprint"), dict):
        raise bad("'fingerprint' to be an object", record.get("fingerprint"))
    done = record.get("sections_done")
    if isinstance(done, bool) or not isinstance(done, int) or done < 1:
        raise bad("'sections_done' to be an integer >= 1", done)
    if record.get("tensors") != tensors_file(done):
        raise bad(
            f"'tensors' to be {tensors_file(done)!r} (the file saved after {done} sections)", record.get("tensors")
        )
    chunks = record.get("frame_chunks")
    if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
        raise bad("'frame_chunks' to be a list of file names", chunks)
    expected = [chunk_name(i) for i in range(len(chunks))]
    if chunks != expected:
        # Plain names in order, never a path: nothing outside the run directory is ever read.
        raise bad(f"'frame_chunks' to be {_short(expected)}", chunks)
    return record


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise InputError(f"cannot resume: the run state names {path.name}, which is missing") from None
    except (OSError, SafetensorError) as error:
        raise InputError(f"cannot read the run state {path}: {error}") from error
    missing = [name for name in _REQUIRED_TENSORS if name not in tensors]
    if missing:
        raise InputError(f"{path}: expected the tensors {list(_REQUIRED_TENSORS)}, {missing} missing")
    count, generator, history = tensors["frame_count"], tensors["generator"], tensors["history"]
    if count.ndim != 0 or count.is_floating_point() or count.dtype == torch.bool or count < 0:
        raise InputError(
            f"{path}: expected 'frame_count' to be one integer >= 0, got {count.dtype} {list(count.shape)}"
        )
    if generator.dtype != torch.uint8 or generator.ndim != 1:
        raise InputError(
            f"{path}: expected 'generator' to be a uint8 vector, got {generator.dtype} {list(generator.shape)}"
        )
    if not history.is_floating_point() or history.ndim != 5:
        raise InputError(
            f"{path}: expected 'history' to be float latents [1, 16, t, h, w], got {history.dtype} {list(history.shape)}"
        )
    return tensors


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], run_dir: str | Path) -> None:
    """Raise InputError naming every input or setting that differs from the saved run.

    Only the changed keys are shown, ``settings`` key by key: ``steps 8 -> 6; prompt changed``
    (digests of images and prompts say "changed": their hex tells a person nothing).
    """
    changes = _changes(saved, current)
    if changes:
        raise InputError(f"cannot resume {run_dir}: settings differ: {'; '.join(changes)}")


def _changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, _MISSING), current.get(key, _MISSING)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _changes(old, new)  # the settings, by their own names
        elif _is_digest(old) or _is_digest(new):
            changes.append(f"{key} changed")
        else:
            changes.append(f"{key} {_shown(old)} -> {_shown(new)}")
    return changes


_MISSING = object()  # a key one side lacks (None is a value)
_DIGEST = re.compile(r"[0-9a-f]{32}")  # what ``digest`` returns


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    return _short(value, 40) if isinstance(value, str) else str(value)
