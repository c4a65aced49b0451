"""An extension as a forward run whose first sections are the source's.

The new run directory starts with a saved state as if its run had made the source's
sections itself: the source's latents as history, a generator state, the source's frames
(``frames.py``) and ``sections_done`` = the sections the source counts as. Iterating the run
is then an ordinary resume (``GenerationRun``), and so is resuming an interrupted extension.

- A finished forward run gives its exact state: history, generator and held float frames.
  Its sections are laid out as those of any longer forward run (layouts do not depend on the
  section count), so extending it by N seconds gives, bit for bit, the run of its length
  plus N seconds with the same inputs and seed.
- A finished inverted run gives its latents (the whole video, start latent first) and its
  frames; forward sections continue from its end. No longer run would equal that.
- A video file gives its last frames' latents (``video_source.py``) and a generator seeded
  with ``config.seed``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import GenerationConfig
from ..errors import ConfigError, InputError
from ..pipeline import EncodedInputs, GenerationRun, ImageInput, RunInputs, _folder_argument, section_prompts
from ..prompt_schedule import PromptSchedule, as_prompt
from ..rundir import claim_run_dir
from ..runstate import RunState, load_run_state, save_run_state
from ..sampling.loop import Progress
from ..sampling.sections import section_count
from .frames import FrameSpool, StartingFrames, clear, copy_chunks
from .run_source import SourceRun, check_seconds, read_source_run, sections_added
from .video_source import SourceVideo, given_sections, open_source_video, seed_from_video

if TYPE_CHECKING:
    from ..pipeline import FramePackPipeline

logger = logging.getLogger("framepack")

Source = SourceRun | SourceVideo


class ExtensionRun(GenerationRun):
    """A forward run that continues ``source``; iterate it for the new sections, then ``result()``."""

    def __init__(
        self,
        *args: Any,
        source: Source,
        encoded: tuple[EncodedInputs, dict[str, Any]],
        given: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.source = source
        self._ready = encoded
        self._given = given

    def _encoded(self) -> tuple[EncodedInputs, dict[str, Any]]:
        return self._ready

    def _new_sections(self) -> int:
        return self.plan.num_sections - self._given

    def _record_extras(self) -> dict[str, Any]:
        # ``--from`` cannot make an extension again (its inputs hold no source): it names the source instead.
        return {"extends": str(self.source.path.absolute())}


def source_config(source: str | os.PathLike[str], *, with_cache: bool = True) -> GenerationConfig | None:
    """The settings a finished run directory was made with (None for a video file): what
    ``extend`` continues with when given no config. ConfigError when its cache cannot be
    rebuilt, unless not ``with_cache`` (the caller gives one; ``cache`` is then None)."""
    path = _source_path(source)
    if not path.is_dir():
        return None
    run = read_source_run(path)
    if with_cache and not run.cache_known:
        raise _unknown_cache(run)
    return run.config


def _unknown_cache(run: SourceRun) -> ConfigError:
    return ConfigError(
        f"the run in {run.path} used the cache {run.state.fingerprint['settings'].get('cache')}, which cannot "
        "be made again from its state: give a config (or --cache) with the cache to continue with"
    )


def start_extension(
    pipeline: FramePackPipeline,
    source: str | os.PathLike[str],
    seconds: float,
    prompt: str | PromptSchedule,
    config: GenerationConfig | None = None,
    *,
    image: ImageInput | None = None,
    negative_prompt: str = "",
    callback: Callable[[Progress], None] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> ExtensionRun:
    """The run that continues ``source`` by ``seconds`` (see ``FramePackPipeline.stream_extend``)."""
    path = _source_path(source)
    run_dir, resume = _folder_argument("run_dir", run_dir), _folder_argument("resume", resume)
    if callback is not None and not callable(callback):
        raise InputError(f"callback: expected a function taking a Progress, or None; got {type(callback).__name__}")
    if resume is not None:
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            raise InputError(f"run_dir {run_dir} and resume {resume} name different folders; give one")
        run_dir = resume
    found, config, given = open_source(path, seconds, config)
    prompt = extension_prompt(found, prompt, config)
    if isinstance(found, SourceRun) and run_dir is not None and run_dir.resolve().is_relative_to(path.resolve()):
        raise InputError(f"run_dir {run_dir} is inside the run being extended, {path}, which is never changed")

    temporary = run_dir is None
    directory = Path(tempfile.mkdtemp(prefix="framepack-extend-")) if run_dir is None else run_dir
    lock = claim_run_dir(directory, resume=resume is not None)
    seeding = False
    try:
        saved = load_run_state(directory) if resume is not None else None
        encoded = _encode(pipeline, found, config, prompt, image, negative_prompt)
        if saved is None:
            seeding = True
            saved = _seed(pipeline, found, config, directory, given, encoded[1])
            seeding = False
        inputs = RunInputs(image, prompt, None, negative_prompt)
        return ExtensionRun(
            pipeline, inputs, config, directory, callback=callback, saved=saved, lock=lock, temporary=temporary,
            source=found, encoded=encoded, given=given,
        )  # fmt: skip
    except BaseException:
        lock.release()
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
        elif seeding:
            clear(directory / "frames")  # spooled for a state that was never saved
        raise


def open_source(
    source: str | os.PathLike[str], seconds: float, config: GenerationConfig | None
) -> tuple[Source, GenerationConfig, int]:
    """Read and check the source (no model runs): it, the extension's settings (a plan of the
    source's sections and the new ones) and how many sections the source counts as."""
    check_seconds(seconds)
    path = _source_path(source)
    if path.is_dir():
        run = read_source_run(path)
        config = _run_config(run, config)
        sections_added(run, seconds)  # at least one, or ConfigError
        return run, replace(config, seconds=run.config.seconds + seconds, mode="forward"), run.plan.num_sections
    config = _checked_mode(config or GenerationConfig(mode="forward"))
    video = open_source_video(path, config)
    given = given_sections(config.window)
    total = given + section_count(seconds, config.fps, config.window)
    return video, replace(config, seconds=total * 4 * config.window / config.fps), given  # a plan of ``total``


def extension_prompt(source: Source, prompt: str | PromptSchedule, config: GenerationConfig) -> str | PromptSchedule:
    """The extension's prompt, parsed and checked against the whole video (no model runs).

    Extending a run, a schedule's times are time in the whole video, the run's sections and
    the new ones, as in the longer run (whose plan ``config`` is). A video file has no sections
    of ours: the plan of an extension counts its last frames as sections of 4·window frames,
    whatever its real length, so schedule times would not be video time: ConfigError.
    """
    prompt = as_prompt(prompt)
    if isinstance(prompt, PromptSchedule) and isinstance(source, SourceVideo):
        raise ConfigError(
            f"prompt schedule: {str(prompt)[:60]!r} gives times in the video, but a video file's frames were "
            "not made in sections, so an extension of one cannot place them; give a plain prompt, or extend "
            "the run directory that made the video"
        )
    section_prompts(prompt, config)  # a schedule that does not fit the longer video fails here
    return prompt


def _source_path(source: object) -> Path:
    if not isinstance(source, (str, os.PathLike)) or not isinstance(os.fspath(source), str) or not os.fspath(source):
        raise InputError(f"source: expected the path of a video file or a run directory, got {source!r:.60}")
    path = Path(source)
    if not path.exists():
        raise InputError(f"source {str(path)!r} does not exist: expected a video file or a run directory")
    return path


def _checked_mode(config: GenerationConfig) -> GenerationConfig:
    if not isinstance(config, GenerationConfig):
        raise ConfigError(f"config: expected a GenerationConfig or None, got {type(config).__name__}")
    if config.mode != "forward":
        raise ConfigError(
            f"config.mode: an extension generates forward (F1) sections after the video; expected "
            f"mode='forward', got {config.mode!r}"
        )
    return config


def _run_config(run: SourceRun, config: GenerationConfig | None) -> GenerationConfig:
    """The settings to continue ``run`` with: ``config`` (same window and fps) or the run's own."""
    if config is None:
        if not run.cache_known:
            raise _unknown_cache(run)
        return replace(run.config, mode="forward")
    config = _checked_mode(config)
    for name in ("window", "fps"):
        if getattr(config, name) != getattr(run.config, name):
            raise ConfigError(
                f"config.{name}: the run in {run.path} was made with {name} {getattr(run.config, name)}; "
                f"an extension continues with the same, got {getattr(config, name)}"
            )
    return config


def _encode(
    pipeline: FramePackPipeline,
    source: Source,
    config: GenerationConfig,
    prompt: str | PromptSchedule,
    image: ImageInput | None,
    negative_prompt: str,
) -> tuple[EncodedInputs, dict[str, Any]]:
    """The extension's encoded inputs, at the source's size, and its fingerprint.

    The start frame and SigLIP reference are ``image`` when given. Otherwise a video file's
    first frame; for a run, its exact start latent, and as reference the video's first frame
    (the start image itself is not kept in a run directory) or none for a text-to-video run.
    (A run that extended a video file has the input's first frame as its start: encoded again.)
    """
    if isinstance(source, SourceVideo):
        size, reference, start_latent = source.size, image if image is not None else source.first_frame, None
    else:
        size, reference, start_latent = source.size, image, None
        if image is None and not source.text_to_video:
            reference = next(source.frames())
            if source.starts_with_start_latent:
                start_latent = source.history[:, :, :1]
                logger.warning(
                    "extending %s without its start image: SigLIP sees the video's first frame instead; give "
                    "the image it was made from to continue exactly as a longer run would",
                    source.path,
                )
    inputs = pipeline.encode(reference, prompt, config, negative_prompt=negative_prompt, size=size)
    if start_latent is not None:
        inputs = replace(inputs, start_latent=start_latent.to(inputs.start_latent))
    fingerprint = pipeline.fingerprint(inputs, prompt, config, negative_prompt=negative_prompt)
    kind = "video" if isinstance(source, SourceVideo) else "run"
    return inputs, fingerprint | {"extends": {kind: source.digest()}}


def _seed(
    pipeline: FramePackPipeline,
    source: Source,
    config: GenerationConfig,
    directory: Path,
    given: int,
    fingerprint: dict[str, Any],
) -> RunState:
    """Write the state the new run starts from (after ``given`` sections) into ``directory``."""
    spool_dir = directory / "frames"
    overlap = 4 * config.window - 3
    if isinstance(source, SourceVideo):
        frames, history = seed_from_video(pipeline, source, config, spool_dir)
        generator = torch.Generator("cpu").manual_seed(config.seed).get_state()
    else:
        tensors = source.state.tensors
        history, generator = tensors["history"], tensors["generator"]
        if source.config.mode == "forward":
            copy_chunks(source.path / "frames", source.state.frame_chunks, spool_dir)
            frames = StartingFrames(source.state.frame_chunks, tensors["held_frames"], int(tensors["frame_count"]))
        else:
            spool = FrameSpool(spool_dir, overlap)
            spool.add_all(source.frames())
            frames = spool.finish()
    state = RunState(
        fingerprint,
        given,
        {
            "history": history.float().cpu(),
            "generator": generator,
            "frame_count": torch.tensor(frames.frame_count),
            "held_frames": frames.held,
        },
        list(frames.chunk_names),
    )
    save_run_state(directory, state)
    return state
