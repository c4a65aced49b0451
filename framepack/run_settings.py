"""The settings record of a run: what made a video, so that it can be made again.

Every finished video carries it, as JSON, in the mp4's ``comment`` tag (the one free-text
tag an mp4 keeps without ``movflags=use_metadata_tags``, and one players show), and the run
directory has the same as ``settings.json``. ``read_settings`` takes either back.

The record is built generically, so settings added later are carried without work here:
- ``config``: every ``GenerationConfig`` field by its dataclass field (a cache given as an
  object is kept as its description, which ``config_from_record`` refuses to rebuild);
- ``inputs``: every field of the run's inputs (``pipeline.RunInputs``); those named in
  ``IMAGE_INPUTS`` are images (path + digest of the file, or digest of the pixels of an
  array), a mapping of them (say keyframes) is recorded value by value, other values as
  ``str`` (a prompt schedule by its canonical string form);
- ``models``: where the pipeline's weights came from (``FramePackPipeline.sources``), their
  digest and dtype, and the LoRAs with strength and file digest;
- ``video``: the frames' height and width (the resolution bucket) and count;
- ``fingerprint``: the pipeline's resume fingerprint of the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import av
import numpy as np

from .atomic import write_bytes
from .config import GenerationConfig
from .errors import ConfigError, InputError

SETTINGS_FILE = "settings.json"
METADATA_TAG = "comment"
FORMAT = 1
WRITTEN_BY = "framepack"
# Inputs that are images (or mappings of images): recorded by path and digest, never as pixels.
IMAGE_INPUTS = ("image", "end_image")


def framepack_version() -> str:
    try:
        return metadata.version("framepack")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def settings_record(
    config: GenerationConfig,
    inputs: object,
    *,
    models: Mapping[str, Any],
    loras: list[dict[str, Any]],
    fingerprint: Mapping[str, Any],
    video: Mapping[str, int],
) -> dict[str, Any]:
    """The record of one run: ``inputs`` is a dataclass of the run's inputs (``RunInputs``),
    ``video`` the size of the frames (after bucketing) and their count."""
    return {
        "written_by": WRITTEN_BY,
        "format": FORMAT,
        "framepack_version": framepack_version(),
        "config": config_record(config),
        "inputs": {f.name: _input_record(f.name, getattr(inputs, f.name)) for f in dataclasses.fields(inputs)},
        "video": dict(video),
        "models": dict(models),
        "loras": loras,
        "fingerprint": dict(fingerprint),
    }


def config_record(config: GenerationConfig) -> dict[str, Any]:
    """Every field of ``config``, JSON-ready; a cache that is no spec string is kept as its description."""
    from .cache.spec import describe_policy

    record = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if record.get("cache") is not None and not isinstance(record["cache"], str):
        record["cache"] = {"custom": describe_policy(record["cache"])}
    return record


def config_from_record(record: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``GenerationConfig`` fields of a record's ``config``, checked by building the config."""
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(record) - names)
    if unknown:
        raise InputError(f"{source}: unknown settings {unknown} (written by a newer framepack?)")
    values = dict(record)
    cache = values.get("cache")
    if isinstance(cache, dict):
        raise InputError(
            f"{source}: the run used a cache policy object ({cache.get('custom')}), which a record cannot "
            "rebuild; give --cache"
        )
    for f in dataclasses.fields(GenerationConfig):
        if f.name in values and not _same_kind(values[f.name], f.default):
            raise InputError(
                f"{source}: expected config {f.name!r} to be {type(f.default).__name__}, got {values[f.name]!r:.60}"
            )
    try:
        GenerationConfig(**values)
    except (ConfigError, TypeError, ValueError) as error:  # a hand-edited record: a value of another kind
        raise InputError(f"{source}: config: {error}") from None
    return values


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a recorded value is of its field's kind, judged by the default (None or a
    cache object: any; the config checks those)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float, str)):
        kinds = (int, float) if isinstance(default, float) else (type(default),)
        return isinstance(value, kinds) and not isinstance(value, bool)
    return True


def _input_record(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in IMAGE_INPUTS or isinstance(value, Mapping):
        if isinstance(value, Mapping):
            return {str(key): image_record(item) for key, item in value.items()}
        return image_record(value)
    if hasattr(value, "blend_sections"):  # a PromptSchedule: its canonical string form lacks the blend
        return {"schedule": str(value), "blend_sections": value.blend_sections}
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def image_record(image: Any) -> dict[str, Any]:
    """A path: its absolute path and the digest of its bytes; an array or PIL image: the digest of its pixels."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        return {"path": str(path.absolute()), "digest": file_digest(path)}
    return {"path": None, "digest": pixels_digest(np.asarray(image))}


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def pixels_digest(pixels: np.ndarray) -> str:
    sha = hashlib.sha256(f"{pixels.dtype} {list(pixels.shape)}\n".encode())
    sha.update(np.ascontiguousarray(pixels).tobytes())
    return sha.hexdigest()


def mp4_metadata(record: Mapping[str, Any]) -> dict[str, str]:
    """The container tags that carry ``record`` in an mp4."""
    return {METADATA_TAG: json.dumps(record, sort_keys=True)}


def write_settings_json(run_dir: Path, record: Mapping[str, Any]) -> Path:
    path = run_dir / SETTINGS_FILE
    write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return path


def read_settings(path: str | Path) -> dict[str, Any]:
    """The record of a video made by framepack (its mp4) or of a run (``settings.json``).

    Raises InputError naming the file when it cannot be read or holds no framepack settings.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--from: expected an .mp4 or settings.json file, but {str(path)!r} does not exist")
    if path.suffix.lower() == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--from: cannot read {path}: {error}") from None
    else:
        text = _mp4_tag(path)
    try:
        record = json.loads(text)
    except ValueError as error:
        raise InputError(f"--from {path}: its settings are not valid JSON ({error})") from None
    if not isinstance(record, dict) or record.get("written_by") != WRITTEN_BY:
        raise InputError(f"--from {path}: expected framepack's settings, found other JSON")
    if record.get("format") != FORMAT:
        raise InputError(f"--from {path}: settings format {record.get('format')!r}, this framepack reads {FORMAT}")
    for key, kind in (("config", dict), ("inputs", dict), ("models", dict), ("loras", list)):
        if not isinstance(record.get(key), kind):
            raise InputError(
                f"--from {path}: expected {key!r} to be a JSON {kind.__name__}, got {record.get(key)!r:.60}"
            )
    return record


def _mp4_tag(path: Path) -> str:
    try:
        with av.open(str(path)) as container:
            tags = dict(container.metadata)
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"--from: cannot read {path} as a video: {error}") from None
    if METADATA_TAG not in tags:
        raise InputError(f"--from {path}: the video carries no framepack settings (no {METADATA_TAG!r} tag)")
    return tags[METADATA_TAG]
