"""``framepack extend INPUT --seconds N``: continue a finished run directory or a video file.

The sampling flags and ``--prompt`` default to the run's own settings when INPUT is a run
directory (so ``framepack extend RUN --seconds 2 --image start.png`` continues it as a longer
run would have; a schedule's times are whole-video time), and to ``generate``'s defaults in
forward mode for a video file (which takes no prompt schedule). The model
flags are ``generate``'s; without ``--model`` the F1 (forward) transformer is loaded.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli import (
    EXIT_STATUS,
    _blend_argument,
    _check_model_arguments,
    _check_out,
    _check_text,
    _load_pipeline,
    _lora_arguments,
    _model_arguments,
    _prompt_argument,
    _run_with_progress,
    overwrite_argument,
)
from .errors import ConfigError, InputError
from .prompt_schedule import PromptSchedule
from .video.resize import RESIZE_METHODS

# flag destination -> GenerationConfig field, for the sampling flags given on the command line
_SETTINGS = {
    "steps": "steps",
    "seed": "seed",
    "cache": "cache",
    "real_cfg": "real_cfg",
    "distilled_cfg": "distilled_cfg",
    "cfg_rescale": "cfg_rescale",
    "window": "window",
    "fps": "fps",
    "resolution": "resolution",
    "resize": "resize",
    "crf": "crf",
}
TINY_VIDEO_DEFAULTS = {"resolution": 128, "steps": 8}


def add_extend_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``extend`` to the ``framepack`` subcommands; returns its parser."""
    ext = sub.add_parser(
        "extend",
        help="continue a finished run directory or a video file with forward (F1) sections",
        description="Continue a finished run directory or a video file: the output is the whole video, "
        "the input's frames then the new ones.",
        epilog=EXIT_STATUS,
    )
    ext.add_argument("input", help="a finished run directory (--run-dir of generate) or a video file")
    ext.add_argument("--seconds", type=float, required=True, help="seconds to add")
    ext.add_argument(
        "--prompt",
        help="what happens in the new part, or a schedule in whole-video time (a run directory only); "
        "default: the run's own prompt, empty for a video file",
    )
    _blend_argument(ext)
    ext.add_argument("--image", help="start frame and image reference (default: the input's first frame)")
    ext.add_argument("--out", default="extended.mp4", help="output .mp4, the whole video (default %(default)s)")
    overwrite_argument(ext)
    ext.add_argument("--negative-prompt", default="")
    ext.add_argument("--steps", type=int, help="sampler steps per section (default: the run's; 25, 8 with --tiny)")
    ext.add_argument("--seed", type=int, help="noise seed for a video input (a run continues its own noise)")
    ext.add_argument("--cache", help="none, teacache[:T], magcache[:T], magcache-f1[:T], fbcache[:T]")
    ext.add_argument("--real-cfg", type=float)
    ext.add_argument("--distilled-cfg", type=float)
    ext.add_argument("--cfg-rescale", type=float)
    ext.add_argument("--window", type=int, help="latent frames per section (a run keeps its own)")
    ext.add_argument("--fps", type=int, help="frame rate (a video's own must match it)")
    ext.add_argument("--resolution", type=int, help="bucket of a video input (default 640; 128 with --tiny)")
    ext.add_argument("--resize", choices=RESIZE_METHODS, help="how the input's frames (and --image) fit the bucket")
    ext.add_argument("--crf", type=int, help="H.264 quality, 0 (best) to 51 (default 16)")
    ext.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        help="decode in spatial tiles (less memory) or not (default: the source video's setting, else as the memory plan decides)",
    )
    _model_arguments(ext)
    ext.add_argument("--run-dir", help="keep the extension's sections, previews and resume state here")
    ext.add_argument("--resume", help="continue an interrupted extension (same INPUT and flags) from its run directory")
    ext.add_argument("--tiny", action="store_true", help="tiny random models: offline demo, the video is noise")
    _lora_arguments(ext)
    ext.set_defaults(run=_extend)
    return ext


def _extend(args: argparse.Namespace) -> int:
    from .config import GenerationConfig
    from .extension import source_config
    from .extension.run import extension_prompt, open_source
    from .video import load_image

    given = {field: getattr(args, flag) for flag, field in _SETTINGS.items() if getattr(args, flag) is not None}
    if args.vae_tiling is not None:
        given["vae_tiling"] = args.vae_tiling
    base = source_config(args.input, with_cache="cache" not in given)
    if base is None:  # a video file
        defaults = TINY_VIDEO_DEFAULTS if args.tiny else {}
        base = GenerationConfig(mode="forward", **defaults)
    config = replace(base, mode="forward", **given)
    # Everything is checked before any model loads: a bad input fails in a second, not after 30 GB.
    found, extended, _ = open_source(args.input, args.seconds, config)
    prompt = extension_prompt(found, _extend_prompt(args), extended)
    _check_text("--negative-prompt", args.negative_prompt)
    _check_model_arguments(args)
    _check_out_is_no_input(args)  # first: the more telling refusal where --out is the existing input
    _check_out(args)
    image = load_image(args.image) if args.image else None
    pipe = _load_pipeline(args, config)
    _run_with_progress(
        args,
        lambda on_step: pipe.stream_extend(
            args.input,
            args.seconds,
            prompt,
            config,
            image=image,
            negative_prompt=args.negative_prompt,
            callback=on_step,
            run_dir=args.run_dir,
            resume=args.resume,
        ),
    )
    return 0


def _extend_prompt(args: argparse.Namespace) -> str | PromptSchedule:
    """``--prompt`` as ``generate`` reads it; without it, the prompt the run was made with, or
    an empty one for a video file."""
    from .extension.run_source import recorded_prompt

    if args.prompt is not None:
        return _prompt_argument(args)
    if args.prompt_blend is not None:
        raise ConfigError("--prompt-blend: blends the prompts of a --prompt schedule, but no --prompt was given")
    source = Path(args.input)
    if not source.is_dir():
        return ""
    recorded = recorded_prompt(source)
    if recorded is None:
        raise ConfigError(
            f"--prompt: the run in {args.input} does not record its prompt (no settings.json: it was made "
            "before framepack wrote them, and its state keeps only the prompt's digest); give --prompt"
        )
    return recorded


def _check_out_is_no_input(args: argparse.Namespace) -> None:
    """``--out`` must not replace the input video nor write into the input run directory."""
    out, source = Path(args.out).absolute(), Path(args.input).absolute()
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()):
        raise InputError(f"--out: {args.out!r} is inside the run directory being extended, which is never changed")
    if out.resolve() == source.resolve() or (out.exists() and out.samefile(source)):
        raise InputError(f"--out: expected a path of its own, but {args.out!r} is the input video")
