"""The ``framepack`` command: ``generate`` a video, or ``plan`` one without running a model.

Whatever goes wrong reaches the user as one ``error:`` line on stderr (``--debug`` shows the
traceback instead) and an exit status that says whose move it is (``EXIT_STATUS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import exists_error
from .config import MAX_STEPS, MIN_RESOLUTION, GenerationConfig
from .errors import (
    ConfigError,
    FramePackError,
    GenerationInterrupted,
    InputError,
    NumericalError,
    OutputError,
    OutputExistsError,
)
from .run_arguments import (
    TINY_DEFAULTS,
    apply_from,
    config_from_arguments,
    destinations,
    typed_destinations,
)
from .sampling.sections import MAX_LATENT_FRAMES, MAX_WINDOW
from .video.buckets import MAX_RESOLUTION
from .video.resize import RESIZE_METHODS

if TYPE_CHECKING:
    from .distributed.launch import Parallel
    from .pipeline import FramePackPipeline, GenerationRun
    from .prompt_schedule import PromptSchedule
    from .sampling.loop import Progress, ProgressCallback
    from .sampling.sections import SectionPlan

logger = logging.getLogger("framepack")

DTYPES = ("bf16", "fp16", "fp32")
EXIT_STATUS = """exit status: 0 done; 2 the input is wrong (a setting, path, image, model folder or checkpoint:
change it and run again); 1 a fault (the disk, memory, inf/NaN, or a bug: see the message);
130 interrupted; 3 under torchrun, another rank failed first and printed the error"""
ANOTHER_RANK_FAILED = 3
# Errors that are not the input's fault: running again with the same input may succeed.
FAULTS = (OutputError, NumericalError, GenerationInterrupted)
OUT_OF_MEMORY_HINT = "try --vram-budget, --vae-tiling or a lower --resolution"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "generate":  # which flags the user typed: they override --from's record, defaults do not
        args.typed = typed_destinations(_generate_arguments, argv[1:])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"interrupted{_resume_hint(args) or ' before any section finished'}", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        message, status = _report(e)
        if not _reports_failure(args, isinstance(e, (InputError, ConfigError))):
            logger.info("another rank failed first and printed the error; this rank's: %s", message)
            return ANOTHER_RANK_FAILED
        _print_error(f"error: {message}{_resume_hint(args, e)}", getattr(args, "parallel", None) == "jobs")
        return status


def _reports_failure(args: argparse.Namespace, argument_error: bool) -> bool:
    """False on the ranks of a parallel run that leave its one error line to another rank."""
    if getattr(args, "parallel", None) is None:
        return True
    from .distributed.launch import reports_failure

    return reports_failure(same_on_every_rank=argument_error)


def _print_error(line: str, every_rank_draws_a_bar: bool = True) -> None:
    """``line`` on stderr, on a line of its own: the ranks of a parallel run share one terminal,
    where another rank's progress bar may hold the current line (a bar ends with no newline):
    rank 0's, or with ``every_rank_draws_a_bar`` (--parallel jobs: a queue's, the only one run
    in a process group) any rank's."""
    dist = sys.modules.get("torch.distributed")
    joined = dist is not None and dist.is_available() and dist.is_initialized()
    after_a_bar = joined and (every_rank_draws_a_bar or dist.get_rank() != 0)
    print(f"\n{line}" if after_a_bar else line, file=sys.stderr)


def _report(error: Exception) -> tuple[str, int]:
    """The one line a user reads for ``error`` (what it says, folded onto one line) and the exit status."""
    import torch

    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, FramePackError):
        return text, 1 if isinstance(error, FAULTS) else 2
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return f"out of memory ({text}); {OUT_OF_MEMORY_HINT}", 1
    if isinstance(error, OSError):  # disk full, read-only, no temporary folder…: the message names it
        return text, 1
    return f"internal error: {type(error).__name__}: {text} (run with --debug for the traceback)", 1


def _resume_hint(args: argparse.Namespace, error: BaseException | None = None) -> str:
    """Where the finished sections of a failed or interrupted run are, if any finished."""
    from .runstate import STATE_FILE

    run_dir = getattr(args, "run_dir_used", None)
    if run_dir is None or not (Path(run_dir) / STATE_FILE).exists():
        return ""
    if getattr(args, "queue_dir_used", None) is not None and not isinstance(error, NumericalError):
        return f" (the queue in {args.queue_dir_used} continues where it stopped: run the same command again)"
    if isinstance(error, NumericalError):  # the same inputs and settings would overflow again on resume
        return f" (finished sections are kept in {run_dir})"
    return f" (finished sections are kept: continue with --resume {run_dir})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framepack", description="FramePack image-to-video in pure PyTorch.", epilog=EXIT_STATUS
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a video from an image and a prompt", epilog=EXIT_STATUS)
    _generate_arguments(gen)
    gen.set_defaults(run=_generate)

    plan = sub.add_parser("plan", help="print the section plan and sizes without running a model", epilog=EXIT_STATUS)
    _settings_arguments(plan)
    plan.add_argument("--size", default="480x640", help="input image size HxW (default %(default)s)")
    plan.add_argument("--image", help="take the input size from this image instead of --size")
    plan.add_argument("--steps", type=int, default=25, help="sampler steps per section (default %(default)s)")
    plan.add_argument("--cache", default="none", help="none, teacache[:T], magcache[:T], magcache-f1[:T], fbcache[:T]")
    plan.add_argument("--real-cfg", type=float, default=1.0, help="real CFG scale (not 1: two calls per step)")
    plan.add_argument(
        "--device-profile",
        default="rtx4090",
        help="card to predict for: rtx3060, rtx3090, rtx4060ti-8gb, "
        "rtx4070, rtx4090, a100, h100, cpu (default %(default)s)",
    )
    plan.add_argument("--measure", action="store_true", help="time this machine's device instead of a profile")
    plan.add_argument("--vram-budget", type=float, help="GPU memory to stay within, GB (the memory plan's budget)")
    plan.add_argument("--fp8", action="store_true", help="transformer block weights in fp8")
    plan.add_argument("--text-tokens", type=int, help="prompt tokens (default: 64, an assumption said so)")
    plan.add_argument("--tiny", action="store_true", help="model the tiny random models of generate --tiny")
    plan.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME=V1,V2",
        help="a table over settings: resolution, steps, cache, "
        "seconds, window, real_cfg (e.g. resolution=640,480 steps=25,15 cache=none,teacache)",
    )
    _keyframe_arguments(plan)
    plan.add_argument("--prompt", help="a prompt or a schedule: print which prompt each section gets")
    _blend_argument(plan)
    plan.set_defaults(run=_plan)

    from .cli_extend import add_extend_command

    extend = add_extend_command(sub)

    for p in (gen, plan, extend):
        p.add_argument("--verbose", action="store_true", help="log progress details")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _generate_arguments(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("--image", help="start image (path); omitted with --tiny: a built-in test pattern")
    gen.add_argument(
        "--prompt", default="", help='what happens in the video, or a schedule: "[0s-2s: a man waves] [2s: he dances]"'
    )
    _blend_argument(gen)
    gen.add_argument(
        "--out", default="framepack.mp4", help="output .mp4 in an existing, writable folder (default %(default)s)"
    )
    overwrite_argument(gen)
    _settings_arguments(gen)
    gen.add_argument(
        "--steps", type=int, help=f"sampler steps per section, 1 to {MAX_STEPS} (default 25; 8 with --tiny)"
    )
    gen.add_argument("--seed", type=int, default=31337, help="-2**63 to 2**64 - 1 (default %(default)s)")
    gen.add_argument("--resize", default="crop", choices=RESIZE_METHODS)
    gen.add_argument("--end-image", help="last frame (inverted mode only)")
    gen.add_argument(
        "--end-strength",
        type=float,
        default=1.0,
        help="end image's latent x this, 0 to 2 (default 1; lower loosens the pull toward the end frame)",
    )
    gen.add_argument(
        "--start-strength",
        type=float,
        default=1.0,
        help="start-frame context latent (start image or keyframe) x this, 0 to 2 (default 1)",
    )
    _keyframe_arguments(gen)
    gen.add_argument(
        "--keyframe-embeds",
        action="store_true",
        help="a keyframe also replaces the start image's SigLIP embeddings in its sections",
    )
    gen.add_argument("--cache", default="none", help="none, teacache[:T], magcache[:T], magcache-f1[:T], fbcache[:T]")
    gen.add_argument("--real-cfg", type=float, default=1.0, help="real CFG scale (1 = off, one pass per step)")
    gen.add_argument("--distilled-cfg", type=float, default=10.0, help="distilled guidance scale")
    gen.add_argument("--cfg-rescale", type=float, default=0.0)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--crf", type=int, default=16, help="H.264 quality, 0 (best) to 51")
    gen.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        help="decode in spatial tiles (less memory) or not (default: as the memory plan decides)",
    )
    _model_arguments(gen)
    gen.add_argument("--run-dir", help="keep finished sections, previews and resume state here")
    gen.add_argument("--resume", help="continue an interrupted run from its run directory")
    gen.add_argument("--tiny", action="store_true", help="tiny random models: offline demo, the video is noise")
    _lora_arguments(gen)
    _queue_arguments(gen)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the models come from and how they are placed and run (``_load_pipeline`` reads them)."""
    _model_choice_arguments(parser)
    _placement_arguments(parser)


def _model_choice_arguments(parser: argparse.ArgumentParser) -> None:
    """Which weights, in which precision: ``--from`` takes them from its record as a group."""
    parser.add_argument(
        "--model", default=None, help="transformer: i2v, f1 or a folder (default: i2v, or f1 in forward mode)"
    )
    parser.add_argument("--hunyuan", default=None, help="HunyuanVideo repo or folder (text encoders, tokenizers, VAE)")
    parser.add_argument("--redux", default=None, help="flux_redux_bfl repo or folder (SigLIP image encoder)")
    _file_arguments(parser)
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="transformer dtype (default: bf16 on GPUs that compute it natively, else fp16; fp32 on CPU)",
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="transformer block Linear weights in fp8, block-scaled (0.65x the streamed bytes of bf16)",
    )


def _placement_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how the weights run: ``--from`` takes each from its record unless typed."""
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the transformer blocks (the first section compiles)"
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, mps, … (default: cuda when available)")
    parser.add_argument(
        "--vram-budget", type=float, help="GPU memory to stay within, GB > 0 (streams blocks, swaps components)"
    )
    parser.add_argument("--mmap", action="store_true", help="keep weights memory-mapped (host RAM below model size)")


def model_choice_arguments() -> frozenset[str]:
    """The flags that choose the models (``--tiny`` is among generate's own)."""
    return frozenset({"tiny"} | destinations(_model_choice_arguments) | destinations(_lora_arguments))


def placement_arguments() -> frozenset[str]:
    return frozenset(destinations(_placement_arguments))


def _lora_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="LoRA file applied at run time, strength default 1 (repeatable: they stack)",
    )


def _queue_arguments(parser: argparse.ArgumentParser) -> None:
    """Making a video again from its settings, and many videos with one loading of the models."""
    parser.add_argument(
        "--from",
        dest="from_settings",
        metavar="VIDEO_OR_JSON",
        help="the settings of a framepack .mp4 or a run's settings.json; flags given too override them",
    )
    parser.add_argument("--seeds", metavar="S1,S2,…", help="one video per seed: OUT-seedS.mp4")
    parser.add_argument("--count", type=int, help="N videos with seeds --seed, --seed+1, …: OUT-seedS.mp4")
    parser.add_argument(
        "--jobs",
        metavar="FILE",
        help='one video per line of FILE, a JSON object of generate arguments ({"prompt": "…", "seed": 5, "out": "x.mp4"})',
    )
    parser.add_argument(
        "--queue-dir", help="the queue's state and run folders (default: JOBS.queue beside --jobs, else OUT.queue)"
    )
    parser.add_argument(
        "--parallel",
        choices=("ulysses", "cfg", "jobs"),
        help="under torchrun: split each step's tokens over the ranks (ulysses), the two real-CFG branches "
        "over 2·N ranks (cfg), or a queue's videos over the ranks (jobs)",
    )


def _keyframe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keyframe",
        action="append",
        default=[],
        metavar="SECTION=PATH|SECONDSs=PATH",
        help="image for the start-frame slot of a section (index in the video, e.g. 3=k.png) or of the "
        "section holding a time (e.g. 2.5s=k.png), and of the sections before it without their own "
        "(inverted mode only; repeatable)",
    )


def _blend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt-blend",
        type=int,
        metavar="N",
        help="with a prompt schedule: blend each prompt change over N sections (default 0: a cut)",
    )


def _prompt_argument(args: argparse.Namespace) -> str | PromptSchedule:
    """``--prompt`` as a plain prompt or a schedule (with ``--prompt-blend``); ConfigError naming a bad part."""
    from .prompt_schedule import MAX_BLEND_SECTIONS, looks_like_schedule, parse_prompt_schedule

    _check_text("--prompt", args.prompt)
    blend = args.prompt_blend
    if blend is not None and not 0 <= blend <= MAX_BLEND_SECTIONS:
        raise ConfigError(f"--prompt-blend: expected 0 to {MAX_BLEND_SECTIONS} sections, got {blend}")
    if not looks_like_schedule(args.prompt):
        if blend is not None:
            raise ConfigError(
                f"--prompt-blend {blend}: only a prompt schedule blends, "
                'like --prompt "[0s: a man waves] [2s: he dances]"; this prompt is plain'
            )
        return args.prompt
    try:
        return parse_prompt_schedule(args.prompt, blend_sections=blend or 0)
    except ConfigError as error:
        raise ConfigError(f"--prompt: {error}") from None


def _file_arguments(parser: argparse.ArgumentParser) -> None:
    """Single weight files, as a ComfyUI models folder holds them, instead of the repos."""
    parser.add_argument(
        "--comfyui",
        metavar="DIR",
        help="ComfyUI models folder: the five files found in diffusion_models/, text_encoders/, clip_vision/, vae/",
    )
    for flag, what in (
        ("--transformer-file", "FramePackI2V_HY_*.safetensors or FramePack_F1_I2V_HY_*.safetensors"),
        ("--text-encoder-file", "llava_llama3_*.safetensors"),
        ("--clip-file", "clip_l.safetensors"),
        ("--image-encoder-file", "sigclip_vision_patch14_384.safetensors"),
        ("--vae-file", "hunyuan_video_vae_*.safetensors"),
    ):
        parser.add_argument(flag, metavar="FILE", help=f"{what} (overrides the one found by --comfyui)")
    parser.add_argument(
        "--tokenizers",
        metavar="DIR",
        help="with single files: a folder with HunyuanVideo's tokenizer/ and tokenizer_2/ (default: the hub repo)",
    )


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds",
        type=float,
        help=f"video length, up to {MAX_LATENT_FRAMES} latent frames (about an hour at 30 fps) (default 5; 1 with --tiny)",
    )
    parser.add_argument("--mode", default="inverted", choices=("inverted", "forward"))
    parser.add_argument(
        "--window", type=int, default=9, help=f"latent frames per section, 1 to {MAX_WINDOW} (default %(default)s)"
    )
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--resolution",
        type=int,
        help=f"bucket resolution, multiple of 16 from {MIN_RESOLUTION} to {MAX_RESOLUTION} (default 640; 128 with --tiny)",
    )


def _setting(args: argparse.Namespace, name: str, default: float) -> float:
    value = getattr(args, name, None)
    if value is not None:
        return value
    return TINY_DEFAULTS[name] if getattr(args, "tiny", False) else default


def _generate(args: argparse.Namespace) -> int:
    from .job_queue import default_queue_dir, is_queue, plan_jobs, run_queue

    if args.from_settings is not None:
        apply_from(args, args.typed, demo_image, model_choice=model_choice_arguments())
    # Check everything before any model: a bad path fails in a second, not after loading 30 GB.
    _check_model_arguments(args)
    parallel = _join_parallel(args)
    if is_queue(args):
        allowed = destinations(_generate_arguments) | {f.name for f in dataclasses.fields(GenerationConfig)}
        jobs = plan_jobs(args, allowed, model_choice_arguments() | placement_arguments())
        if parallel is not None:  # jobs: each rank runs every world_size-th job, with its own queue folder
            jobs = jobs[parallel.rank :: parallel.world_size]
            args.queue_dir = str(Path(args.queue_dir or default_queue_dir(args)) / f"rank-{parallel.rank}")
        return run_queue(args, jobs, _load_pipeline, _job_config, _run_job, _report, print, _print_error)
    config = _job_config(args)
    if parallel is not None:  # before any model is loaded
        from .distributed.launch import check_guidance

        check_guidance(parallel.mode, config.real_cfg)
    pipe = _load_pipeline(args, config)
    pipe.use_parallel(parallel)
    if pipe._samples_for_rank_0():  # rank 0 shows progress and writes --out
        pipe.generate(
            args.image if args.image else demo_image(config.resolution),
            _prompt_argument(args),
            config,
            end_image=args.end_image,
            negative_prompt=args.negative_prompt,
            keyframes={section: path for section, (_, path) in _keyframes(args, config).items()},
        )
        return 0
    _run_job(pipe, args, config)
    return 0


def _join_parallel(args: argparse.Namespace) -> Parallel | None:
    """With --parallel: join torchrun's process group and lay the ranks out (every rank runs this)."""
    if args.parallel is None:
        return None
    from .distributed.launch import join, plan
    from .job_queue import is_queue

    if is_queue(args) != (args.parallel == "jobs"):
        raise ConfigError(
            "--parallel jobs spreads a queue (--seeds, --count or --jobs) over the ranks; "
            f"--parallel {args.parallel} makes one video, got " + ("a queue" if is_queue(args) else "no queue")
        )
    if args.resume is not None and args.parallel != "jobs":
        raise ConfigError("--resume: a parallel run cannot be resumed; resume it in one process")
    join()
    return plan(args.parallel)


def _check_model_arguments(args: argparse.Namespace) -> None:
    _check_device(args.device)
    if args.vram_budget is not None and not (math.isfinite(args.vram_budget) and args.vram_budget > 0):
        raise InputError(f"--vram-budget: expected a finite number of GB > 0, got {args.vram_budget:g}")


def _job_config(args: argparse.Namespace) -> GenerationConfig:
    """The config of one video, its inputs and output checked."""
    from .pipeline import check_inputs, section_prompts
    from .video import load_image

    config = config_from_arguments(args)
    keyframes = _keyframes(args, config)
    paths = {section: path for section, (_, path) in keyframes.items()}
    check_inputs(config, end_image=args.end_image, negative_prompt=args.negative_prompt, keyframes=paths)
    _check_text("--negative-prompt", args.negative_prompt)
    section_prompts(_prompt_argument(args), config)  # a schedule that does not fit the video fails here
    _check_out(args)
    for path in (args.image, args.end_image):
        if path:
            load_image(path)
    for spec, path in keyframes.values():
        _load_keyframe(spec, path)
    if args.image is None and not args.tiny:
        raise InputError("--image: expected an image path (or --tiny for the offline demo), got none")
    return config


def _keyframes(args: argparse.Namespace, config: GenerationConfig) -> dict[int, tuple[str, str]]:
    """Video section -> (its ``--keyframe`` argument, image path) for ``config``'s plan."""
    from .sampling.sections import plan_sections

    plan = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
    return _keyframe_specs(args.keyframe, plan)


def _load_pipeline(args: argparse.Namespace, config: GenerationConfig) -> FramePackPipeline:
    import torch

    from .components import F1_REPO, HUNYUAN_REPO, I2V_REPO, REDUX_REPO
    from .pipeline import FramePackPipeline

    files = _single_files(args, config.mode)  # a missing weight file fails here, before any is read
    loras = [_lora_argument(spec) for spec in args.lora]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}[args.dtype]
    if args.tiny:
        pipe = FramePackPipeline.tiny(seed=0, device=args.device or "cpu")
        if args.fp8:  # blocks of 64 do not divide the tiny widths; a block that does keeps it block-scaled
            transformer = pipe.components.transformer
            transformer.quantize_fp8(block=math.gcd(64, transformer.config.inner_dim))
            pipe.sources["weights"] = "fp8"
        for path, strength in loras:
            pipe.add_lora(path, strength)
        if args.vram_budget is not None:
            pipe.set_vram_budget(args.vram_budget, resolution=config.resolution, window=config.window)
    elif files is not None:
        pipe = FramePackPipeline.from_files(
            **files,
            tokenizers=args.tokenizers or HUNYUAN_REPO,
            mode=config.mode,
            device=args.device,
            dtype=dtype,
            storage="mmap" if args.mmap else "copy",
            vram_budget_gb=args.vram_budget,
            resolution=config.resolution,
            window=config.window,
            weights="fp8" if args.fp8 else None,
            loras=loras,
        )
    else:
        model = {"i2v": I2V_REPO, "f1": F1_REPO}.get(args.model or "", args.model)
        pipe = FramePackPipeline.from_pretrained(
            model or (F1_REPO if config.mode == "forward" else I2V_REPO),
            hunyuan=args.hunyuan or HUNYUAN_REPO,
            redux=args.redux or REDUX_REPO,
            device=args.device,
            dtype=dtype,
            storage="mmap" if args.mmap else "copy",
            weights="fp8" if args.fp8 else None,
            vram_budget_gb=args.vram_budget,
            resolution=config.resolution,
            window=config.window,
            loras=loras,
        )
    recorded = getattr(args, "from_weights_digest", None)  # set by --from when the record chose the models
    if recorded is not None and pipe.components.weights_digest() != recorded:
        raise InputError(
            f"--from {args.from_settings}: the weights loaded (digest {pipe.components.weights_digest()}) are not "
            f"those that made the video ({recorded}): they changed since; type the model flags to use them anyway"
        )
    if args.compile:
        pipe.compile()
    if pipe.device.type == "cpu":
        _check_host_memory(pipe, config)
    return pipe


def _run_job(pipe: FramePackPipeline, args: argparse.Namespace, config: GenerationConfig) -> Path:
    """Generate one video into ``args.out`` with a progress bar; returns its path."""
    from .cost.report import measured_line, predict_run, prediction_line
    from .video import load_image

    image = args.image if args.image else demo_image(config.resolution)  # a path: the settings record it
    predicted = predict_run(
        pipe, config, load_image(image) if args.image else image, args.prompt or "", args.vram_budget
    )
    print(prediction_line(predicted))
    started = time.perf_counter()
    path = _run_with_progress(
        args,
        lambda on_step: pipe.stream(
            image,
            _prompt_argument(args),
            config,
            end_image=args.end_image,
            negative_prompt=args.negative_prompt,
            # Paths, not pixels: the settings record each keyframe's path and digest (framepack.run_settings).
            keyframes={section: path for section, (_, path) in _keyframes(args, config).items()},
            callback=on_step,
            run_dir=args.run_dir,
            resume=args.resume,
        ),
    )
    print(measured_line(predicted, time.perf_counter() - started))
    return path


def _run_with_progress(args: argparse.Namespace, start: Callable[[ProgressCallback], GenerationRun]) -> Path:
    """Start a run with a progress bar as its callback, iterate it and save the video to ``--out``."""
    from tqdm import tqdm

    def on_step(progress: Progress) -> None:
        bar.set_description(
            f"section {progress.section + 1}/{progress.num_sections} step {progress.step + 1}/{progress.num_steps}"
        )
        bar.update(1)

    # The run checks and claims its folder first: a refusal prints no progress bar before its error line.
    run = start(on_step)
    steps = run.config.steps
    bar = tqdm(total=run.plan.num_sections * steps, initial=run.sections_done * steps, unit="step", dynamic_ncols=True)
    args.run_dir_used = run.run_dir
    try:
        for section in run:
            bar.write(
                f"section {section.index + 1}/{section.num_sections} done in {section.seconds:.1f}s; preview {section.preview}"
            )
    finally:
        bar.close()
    try:  # also deletes the run folder if it was a temporary one
        path = run.result().save(args.out, overwrite=args.overwrite)
    except OutputExistsError:  # a file that appeared at --out during the run is kept, as one there before
        raise _out_exists(args) from None
    print(f"wrote {path} ({run.result().num_frames} frames)")
    return path


# SECTION=PATH or SECONDSs=PATH: the key ends at the first '=', so the path may hold '=' or ':'.
_KEYFRAME_KEY = re.compile(r"(?P<section>\d+)|(?P<seconds>\d+(?:\.\d*)?|\.\d+)s")


def _keyframe_specs(specs: Sequence[str], plan: SectionPlan) -> dict[int, tuple[str, str]]:
    """Video section -> (the ``--keyframe`` argument, its image path); InputError/ConfigError naming a bad one.

    Seconds become sections here, by ``framepack.keyframes``' rule: section 3 and 3 s are
    different sections, which one dict keyed by both an int 3 and a float 3.0 could not hold.
    """
    from .keyframes import keyframe_sections

    keys, paths = [], []
    for spec in specs:
        key, separator, path = spec.partition("=")
        match = _KEYFRAME_KEY.fullmatch(key.strip())
        if not separator or not path or match is None:
            raise InputError(
                f"--keyframe {spec!r}: expected SECTION=PATH (a section index in the video, e.g. 3=k.png) "
                "or SECONDSs=PATH (seconds of video, e.g. 2.5s=k.png)"
            )
        keys.append(int(match["section"]) if match["section"] else float(match["seconds"]))
        paths.append((spec, path))
    return dict(sorted(zip(keyframe_sections(keys, plan), paths)))


def _load_keyframe(spec: str, path: str) -> np.ndarray:
    from .video import load_image

    try:
        return load_image(path)
    except InputError as e:
        raise InputError(f"--keyframe {spec!r}: {e}") from None


def _single_files(args: argparse.Namespace, mode: str) -> dict[str, Path] | None:
    """The weight files ``--comfyui`` and the ``--*-file`` flags name (None: the repos are used),
    each checked to exist; raise InputError or CheckpointError naming what is missing."""
    from .comfyui import COMPONENTS, FILE_FLAGS, find_comfyui_files

    given = {name: getattr(args, FILE_FLAGS[name].lstrip("-").replace("-", "_")) for name in COMPONENTS}
    if args.comfyui is None and all(path is None for path in given.values()):
        if args.tokenizers is not None:
            raise InputError("--tokenizers: only with --comfyui or the --*-file flags (the --hunyuan repo has its own)")
        return None
    for flag in ("--tiny", "--model", "--hunyuan", "--redux"):
        if getattr(args, flag.lstrip("-")):
            source = "--comfyui" if args.comfyui is not None else "--*-file flags"
            raise InputError(f"{flag}: not with {source}, which name the weight files themselves")
    for name, path in given.items():
        if path is not None and not Path(path).is_file():
            problem = "is a folder" if Path(path).is_dir() else "does not exist"
            raise InputError(f"{FILE_FLAGS[name]}: expected a .safetensors file, but {path!r} {problem}")
    if args.tokenizers is not None:
        _check_tokenizers(args.tokenizers)
    if args.comfyui is not None:
        return find_comfyui_files(args.comfyui, mode=mode, given=given)  # type: ignore[arg-type]
    absent = [FILE_FLAGS[name] for name, path in given.items() if path is None]
    if absent:
        raise InputError(f"single weight files: also give {', '.join(absent)}, or --comfyui DIR to find them")
    return {name: Path(path) for name, path in given.items()}


def _check_tokenizers(source: str) -> None:
    """Raise InputError unless ``source`` is a folder with both tokenizers, or looks like a hub repo id."""
    folder = Path(source).expanduser()
    if not folder.exists():
        if source.count("/") == 1 and not source.startswith((".", "/", "~")):
            return  # a hub repo: fetched when the pipeline loads
        raise InputError(f"--tokenizers: expected a folder or hub repo id, but {source!r} does not exist")
    needed = [
        folder / "tokenizer" / "tokenizer.json",
        folder / "tokenizer_2" / "vocab.json",
        folder / "tokenizer_2" / "merges.txt",
    ]
    missing = [str(p.relative_to(folder)) for p in needed if not p.is_file()]
    if missing:
        raise InputError(
            f"--tokenizers: {source!r} lacks {', '.join(missing)} (HunyuanVideo's tokenizer/ and tokenizer_2/)"
        )


def _lora_argument(spec: str) -> tuple[Path, float]:
    """``PATH[:STRENGTH]``: a strength is what follows the last ':' when it reads as a number."""
    path, value = spec, 1.0
    head, separator, tail = spec.rpartition(":")
    if separator and head and _is_number(tail):  # else the ':' is the path's own (C:\\loras\\x.safetensors)
        path, value = head, float(tail)
    if not math.isfinite(value):
        raise InputError(f"--lora {spec!r}: expected PATH[:STRENGTH] with a finite strength, got {tail!r}")
    if not Path(path).is_file():
        raise InputError(f"--lora {spec!r}: LoRA file {path!r} does not exist")
    return Path(path), value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_text(flag: str, value: str) -> None:
    """Raise InputError unless ``value`` is text a tokenizer can take: UTF-8 encodable, no NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise InputError(
            f"{flag}: expected UTF-8 text, got bytes that are not (character {e.start} is {value[e.start]!r})"
        ) from None
    if "\0" in value:
        raise InputError(f"{flag}: expected text, got a NUL character at character {value.index(chr(0))}")


def _check_device(spec: str | None) -> None:
    """Raise InputError unless ``spec`` names a device this machine has (None: the default, always)."""
    import torch

    if spec is None:
        return
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InputError(f"--device: expected a device like cpu, cuda or cuda:1, got {spec!r}; {_devices()}") from None
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    if not getattr(backend, "is_available", lambda: False)():
        raise InputError(f"--device {spec}: this machine has no {device.type} device; {_devices()}")
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise InputError(f"--device {spec}: this machine has {count} {device.type} device(s); {_devices()}")


def _devices() -> str:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return f"available: {', '.join(found)}"


def overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (default: refuse, so no video is lost)"
    )


def _check_out(args: argparse.Namespace) -> None:
    """Raise InputError unless ``--out`` is a new .mp4 (or one ``--overwrite`` lets go) in a writable folder that is no input."""
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"--out: expected a path ending in .mp4, got {args.out!r}")
    if out.is_dir():
        raise InputError(f"--out: expected a file, but {args.out!r} is a folder")
    folder = out.absolute().parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"--out: expected a file in an existing folder, but {folder} {problem}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--out: expected a file in a folder you can write to, but {folder} is not writable")
    # ``framepack extend`` has no end image, keyframes or --from: its own inputs are checked in cli_extend.
    inputs = [("--image", args.image), ("--end-image", getattr(args, "end_image", None)), ("--run-dir", args.run_dir),
              ("--resume", args.resume), ("--from", getattr(args, "from_settings", None))]  # fmt: skip
    inputs += [("--keyframe", spec.partition("=")[2]) for spec in getattr(args, "keyframe", ())]
    for flag, other in inputs:
        if other and _same_path(out, Path(other)):
            raise InputError(f"--out: expected a path of its own, but {args.out!r} is also the {flag} {other!r}")
    if os.path.lexists(out) and not args.overwrite:  # a dangling link too: the end's publish would keep it
        raise _out_exists(args)


def _out_exists(args: argparse.Namespace) -> OutputExistsError:
    return exists_error(args.out, "give another --out, or --overwrite", what="--out")


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or (both existing) the same inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_host_memory(pipe: FramePackPipeline, config: GenerationConfig) -> None:
    """On the CPU activations share the host RAM with the weights: refuse a run whose smallest
    estimated peak (VAE tiled) is larger than the RAM still available, before it thrashes or dies."""
    from .memory.host import available_host_bytes
    from .memory.planner import activation_estimates
    from .units import GIB

    available = available_host_bytes()
    if available is None:
        return
    untiled, tiled = activation_estimates(pipe.components.modules(), config.resolution, config.window)
    peak = max(min(size, tiled.get(phase, size)) for phase, size in untiled.items())
    if peak > available:
        raise InputError(
            f"--resolution {config.resolution} --window {config.window}: a section needs about {peak / GIB:.1f} GiB "
            f"of activations, more than the {available / GIB:.1f} GiB of RAM available; lower --resolution or --window"
        )


def _plan(args: argparse.Namespace) -> int:
    from .keyframes import check_keyframes
    from .models.packing import packed_tokens
    from .models.siglip import SiglipVisionConfig
    from .prompt import MAX_PROMPT_TOKENS
    from .prompt_schedule import describe_section_prompts, resolve_prompt
    from .sampling.schedule import sequence_length
    from .sampling.sections import plan_sections
    from .video import find_bucket, load_image

    if args.image:
        height, width = load_image(args.image).shape[:2]
    else:
        try:
            height, width = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise FramePackError(f"--size: expected HxW like 480x640, got {args.size!r}") from None
    resolution = int(_setting(args, "resolution", 640))
    bucket_h, bucket_w = find_bucket(height, width, resolution)
    plan = plan_sections(float(_setting(args, "seconds", 5.0)), fps=args.fps, window=args.window, mode=args.mode)
    keyframes = _keyframe_specs(args.keyframe, plan) if args.keyframe else None
    if keyframes is not None:
        check_keyframes(keyframes, plan)  # the mode
    if args.prompt is None and args.prompt_blend is not None:
        raise ConfigError("--prompt-blend: blends the prompts of a --prompt schedule, but no --prompt was given")
    prompts = None if args.prompt is None else resolve_prompt(_prompt_argument(args), plan)  # before any output
    h, w = bucket_h // 8, bucket_w // 8
    noisy, clean = packed_tokens(h, w, args.window)
    image_tokens = SiglipVisionConfig.preset("siglip-so400m-patch14-384").num_patches
    print(plan.describe())
    print(f"input {height}x{width} -> bucket {bucket_h}x{bucket_w} px, latent {h}x{w}")
    print(f"video: {plan.latent_frames} latent frames, {plan.pixel_frames} pixel frames at {args.fps} fps")
    print(
        f"tokens per section: {noisy} noisy + {clean} packed context = {noisy + clean} image tokens (+ <= {image_tokens + MAX_PROMPT_TOKENS} text/image)"
    )
    print(f"shift sequence length: {sequence_length(plan.window_pixel_frames, bucket_h, bucket_w)}")
    _plan_cost(args, height, width)
    if keyframes is not None:
        _print_keyframes(keyframes, plan)
    if prompts is not None:
        print("\n".join(describe_section_prompts(prompts, plan)))
    return 0


def _plan_cost(args: argparse.Namespace, height: int, width: int) -> None:
    """The cost part of ``plan``: FLOPs, memory and time on a device, or a table comparing settings."""
    import torch

    from .config import GenerationConfig
    from .cost.compare import combinations, compare, format_table, parse_axes
    from .cost.estimate import call_shape, decode_tile_sizes, estimate
    from .cost.measure import measure_profile
    from .cost.memory import ModelConfigs
    from .cost.profiles import device_profile
    from .device_runtime import runtime
    from .video import find_bucket

    config = GenerationConfig(
        seconds=float(_setting(args, "seconds", 5.0)),
        fps=args.fps,
        window=args.window,
        steps=args.steps,
        mode=args.mode,
        real_cfg=args.real_cfg,
        resolution=int(_setting(args, "resolution", 640)),
        cache=args.cache,
    )
    models = ModelConfigs.tiny() if args.tiny else ModelConfigs.real()
    profile = device_profile(args.device_profile)
    axes = parse_axes(args.compare) if args.compare else {}
    if args.measure:
        # every temporal tile size a row decodes (the factors hold at this run's latent size only)
        configs = [config, *(c for _, c in combinations(config, axes))]
        tile_sizes = sorted({n for c in configs for n in decode_tile_sizes(c, models.vae)})
        device = torch.device("cuda" if runtime().is_available() else "cpu")
        profile = measure_profile(
            device_profile("cpu" if device.type == "cpu" else args.device_profile),
            device,
            dtype=torch.float32 if device.type == "cpu" else torch.bfloat16,
            transformer=models.transformer,
            shape=call_shape(config, models, (height, width), args.text_tokens),
            vae=models.vae,
            frame_size=find_bucket(height, width, config.resolution),
            decode_tiles=tile_sizes,
        )

    def run(c: GenerationConfig):  # the same estimate for every row of a comparison
        return estimate(
            c,
            profile,
            models=models,
            image_size=(height, width),
            text_tokens=args.text_tokens,
            vram_budget_gb=args.vram_budget,
            fp8=args.fp8,
            from_disk=not args.tiny,
        )

    if args.compare:
        rows = compare(config, axes, run)
        budget = "" if args.vram_budget is None else f", --vram-budget {args.vram_budget:g}"
        print(f"{models.name} models on {profile.name} ({profile.source} rates{budget}), {config.seconds:g} s video:")
        print(format_table(rows, device_memory=not profile.is_host))
        return
    print(run(config).describe())


def _print_keyframes(specs: dict[int, tuple[str, str]], plan: SectionPlan) -> None:
    """Which image stands in each section's start-frame slot, in video order."""
    from .keyframes import keyframe_coverage, section_span

    sections = list(specs)
    print("start-frame slot by section, in video order:")
    for section, keyframe in enumerate(keyframe_coverage(sections, plan.num_sections)):
        span = "{:.2f}-{:.2f} s".format(*section_span(section, plan))
        if keyframe is None:
            print(f"  video section {section} ({span}): the start image")
        else:
            own = sections[keyframe]
            whose = "its own keyframe" if own == section else f"the keyframe of section {own}"
            print(f"  video section {section} ({span}): {specs[own][1]} ({whose})")


def demo_image(size: int) -> np.ndarray:
    """A smooth colourful uint8 image, size x size: the --tiny default input."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6.28 * (x + y))], axis=-1)
    return (rgb * 255).astype(np.uint8)


if __name__ == "__main__":
    sys.exit(main())
