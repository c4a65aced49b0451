"""From the ``generate`` command's arguments to a run's settings, and back from a settings record.

The arguments are an ``argparse.Namespace`` whose names (``dest``) are those of the flags; a
name that is a ``GenerationConfig`` field is that setting, whether a flag sets it, a line of a
jobs file or ``--from``'s record. ``--from`` fills in what the user did not type: flags typed
on the command line win over the record, argparse's defaults do not (``typed_destinations``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import GenerationConfig
from .errors import InputError
from .run_settings import config_from_record, file_digest, pixels_digest, read_settings

TINY_DEFAULTS = {"resolution": 128, "seconds": 1.0, "steps": 8}
DTYPE_FLAGS = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}
# single-file source name in the record -> its flag's dest
FILE_ARGUMENTS = {
    "transformer": "transformer_file", "text_encoder": "text_encoder_file", "text_encoder_2": "clip_file",
    "image_encoder": "image_encoder_file", "vae": "vae_file", "tokenizers": "tokenizers",
}  # fmt: skip


def config_from_arguments(args: argparse.Namespace) -> GenerationConfig:
    """Every ``GenerationConfig`` field the arguments name (None: its default, or the --tiny one)."""
    values = {}
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f.name, None)
        if value is None and getattr(args, "tiny", False):
            value = TINY_DEFAULTS.get(f.name)
        if value is not None:
            values[f.name] = value
    return GenerationConfig(**values)


def typed_destinations(add_arguments: Callable[[argparse.ArgumentParser], None], argv: Sequence[str]) -> set[str]:
    """The names of the flags in ``argv`` (a subcommand's arguments), defaults left out."""
    parser = _without_defaults(add_arguments)
    typed, _ = parser.parse_known_args(list(argv))
    return set(vars(typed))


def destinations(add_arguments: Callable[[argparse.ArgumentParser], None]) -> set[str]:
    """The names of every flag ``add_arguments`` adds."""
    return {action.dest for action in _without_defaults(add_arguments)._actions}


def _without_defaults(add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    for action in parser._actions:  # argparse has no public way to list them
        action.default = argparse.SUPPRESS
    return parser


def apply_from(
    args: argparse.Namespace,
    typed: set[str],
    demo_image: Callable[[int], np.ndarray],
    *,
    model_choice: Collection[str],
) -> None:
    """Fill ``args`` from the settings record ``args.from_settings`` names, where the user typed nothing.

    The flags in ``model_choice`` (which weights, precision, LoRAs) come from the record as a
    group, only when none is typed: one typed model flag says the record's models are not wanted.
    ``--compile`` and ``--device`` (its type) come from the record one by one, unless typed.
    Raises InputError when the record cannot be used as it is: an input image or LoRA file that
    is missing or changed since the video was made (pass the flag), models built in Python.
    """
    source = str(args.from_settings)
    record = read_settings(args.from_settings)
    if "extends" in (record.get("fingerprint") or {}):  # its inputs hold no source: it cannot be made as a generate
        raise InputError(
            f"--from {source}: the video was made by framepack extend from {record.get('extends', 'another video')}; "
            "run framepack extend again"
        )
    values: dict[str, Any] = dict(config_from_record(record["config"], source))
    inputs = record["inputs"]
    for name in ("prompt", "negative_prompt"):
        if isinstance(inputs.get(name), str):
            values[name] = inputs[name]
    schedule = inputs.get("prompt")
    if isinstance(schedule, dict) and isinstance(schedule.get("schedule"), str):  # a PromptSchedule's record
        values["prompt"] = schedule["schedule"]
        if "prompt" not in typed:  # a typed prompt brings its own blend, or none
            values["prompt_blend"] = schedule.get("blend_sections") or None
    if not typed & set(model_choice):
        values |= _model_arguments(record, source, mode_typed="mode" in typed)
        args.from_weights_digest = record["models"].get("weights_digest")  # checked once loaded (cli)
    values |= _placement(record["models"])
    for name, value in values.items():
        if name not in typed:
            setattr(args, name, value)
    tiny = bool(getattr(args, "tiny", False))
    demo = demo_image(config_from_arguments(args).resolution)  # --tiny's image when none is given, as it ran
    for name, flag in (("image", "--image"), ("end_image", "--end-image")):
        if name not in typed:
            setattr(args, name, _recorded_image(inputs.get(name), flag, source, tiny and name == "image", demo))
    keyframes = inputs.get("keyframes")
    if "keyframe" not in typed and keyframes is not None:
        if not isinstance(keyframes, dict):
            raise InputError(
                f"--from {source}: expected the keyframes as {{key: {{path, digest}}}}, got {keyframes!r:.60}"
            )
        args.keyframe = [
            f"{_keyframe_key(key, source)}={_recorded_image(entry, '--keyframe', source, False, demo)}"
            for key, entry in keyframes.items()
        ]


def _keyframe_key(key: str, source: str) -> str:
    """A recorded keyframe key as ``--keyframe`` takes it: an int is a video section ("3" -> 3=),
    a float seconds of video ("2.5" or "3.0" -> 2.5s=, 3s=), as ``str`` of the API's key wrote it."""
    if key.isdigit():
        return key
    try:
        seconds = float(key)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"--from {source}: expected a keyframe key as a section (3) or seconds (2.5), got {key!r}")
    return np.format_float_positional(seconds, trim="-") + "s"


def _model_arguments(record: dict[str, Any], source: str, *, mode_typed: bool) -> dict[str, Any]:
    models = record["models"]
    kind = models.get("kind")
    values: dict[str, Any] = {"fp8": models.get("weights") == "fp8"}
    if kind == "tiny":
        values["tiny"] = True
    elif kind == "pretrained":
        values |= {"hunyuan": models.get("hunyuan"), "redux": models.get("redux")}
        if not mode_typed:  # another mode without --model picks that mode's default transformer
            values["model"] = models.get("transformer")
    elif kind == "files":
        values |= {dest: models.get(name) for name, dest in FILE_ARGUMENTS.items()}
    else:
        raise InputError(
            f"--from {source}: the video was made by a pipeline built in Python ({kind!r}); "
            "give the model flags (--model, --comfyui, --tiny…)"
        )
    if kind != "tiny" and models.get("dtype") in DTYPE_FLAGS:
        values["dtype"] = DTYPE_FLAGS[models["dtype"]]
    values["lora"] = [_recorded_lora(entry, source) for entry in record["loras"]]
    return values


def _placement(models: dict[str, Any]) -> dict[str, Any]:
    """How the record's models ran, where that changes the video's bits: compiled blocks round
    differently from eager ones, and another device type computes differently."""
    placement: dict[str, Any] = {"compile": models.get("compile") is True}  # records before it: not compiled
    if isinstance(models.get("device"), str):
        placement["device"] = models["device"]
    return placement


def _recorded_lora(entry: Any, source: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        raise InputError(f"--from {source}: expected each LoRA as {{source, digest, strength}}, got {entry!r:.60}")
    path = Path(entry["source"])
    if not path.is_file():
        raise InputError(f"--from {source}: the LoRA {path} it used does not exist; give --lora")
    if file_digest(path) != entry.get("digest"):
        raise InputError(f"--from {source}: the LoRA {path} changed since the video was made; give --lora")
    return f"{path}:{float(entry.get('strength', 1.0))!r}"


def _recorded_image(
    entry: Any,
    flag: str,
    source: str,
    may_be_demo: bool,
    demo: np.ndarray,
) -> str | None:
    """The recorded image's path, checked to hold the same bytes; None for none (or --tiny's demo image)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise InputError(f"--from {source}: expected the {flag} input as {{path, digest}}, got {entry!r:.60}")
    path, recorded = entry.get("path"), entry.get("digest")
    if path is None:
        if may_be_demo and pixels_digest(demo) == recorded:
            return None  # --tiny's demo image, made again
        raise InputError(f"--from {source}: the {flag} was given as pixels, not a file; give {flag}")
    if not Path(path).is_file():
        raise InputError(f"--from {source}: the {flag} file {path} does not exist (any more); give {flag}")
    if file_digest(Path(path)) != recorded:
        raise InputError(f"--from {source}: the {flag} file {path} changed since the video was made; give {flag}")
    return path
