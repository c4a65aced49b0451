"""A finished run directory, read (never written) to be continued.

What a run directory keeps after its last section (``framepack.runstate``) is everything an
extension needs: the latents of the whole video, the noise generator's state, the frames
finished as uint8 chunks and, in forward mode, the float frames still held for the next
blend. Its settings come from the fingerprint in ``state.json``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import FirstBlockCache, MagCache, NoCache, TeaCache
from ..cache.base import CachePolicy
from ..cache.spec import describe_policy
from ..config import GenerationConfig
from ..errors import ConfigError, InputError
from ..prompt_schedule import PromptSchedule, parse_prompt_schedule
from ..run_settings import SETTINGS_FILE, read_settings
from ..rundir import MARKER_FILE, is_marked
from ..runstate import STATE_FILE, RunState, digest, load_run_state
from ..sampling.sections import SectionPlan, plan_sections
from ..sampling.settings import SamplingSettings
from ..video import FrameAssembler

# The policies a run's fingerprint can name and ``_rebuild_cache`` can make again.
_CACHE_CLASSES: dict[str, type[CachePolicy]] = {
    cls.__name__: cls for cls in (NoCache, TeaCache, MagCache, FirstBlockCache)
}


@dataclass(frozen=True)
class SourceRun:
    """A finished run: its state, its settings and its plan.

    config  the run's settings as a ``GenerationConfig`` (its own mode and seconds); its
            cache is rebuilt from the fingerprint's description when that is a built-in one
    cache_known  False when the run's cache could not be rebuilt (``config.cache`` is then None)
    """

    path: Path
    state: RunState
    config: GenerationConfig
    cache_known: bool
    plan: SectionPlan

    @property
    def history(self) -> torch.Tensor:
        """The whole video's latents [1, 16, T, h, w], in temporal order."""
        return self.state.tensors["history"]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of its frames in pixels."""
        return self.history.shape[3] * 8, self.history.shape[4] * 8

    @property
    def text_to_video(self) -> bool:
        """Whether the run had no start image (its fingerprint names the black image ``encode`` uses then)."""
        height, width = self.size
        black = digest(torch.zeros((height, width, 3), dtype=torch.uint8))
        return self.state.fingerprint.get("image") == black

    @property
    def starts_with_start_latent(self) -> bool:
        """Whether the history's first latent is the video's start latent: true of every run but
        the extension of a video file, whose history starts with the input's last frames."""
        extends = self.state.fingerprint.get("extends")
        return not (isinstance(extends, dict) and "video" in extends)

    def digest(self) -> str:
        """What identifies the run's result: its latents, generator state and frames."""
        tensors = self.state.tensors
        return digest(
            self.history, tensors["generator"], tensors.get("held_frames"),
            f"{int(tensors['frame_count'])} frames in {self.state.frame_chunks}",
        )  # fmt: skip

    def frames(self) -> Iterator[np.ndarray]:
        """The video's frames, uint8 (H, W, 3), in temporal order, read from its ``frames/``."""
        assembler = FrameAssembler(self.config.mode, 4 * self.config.window - 3, spool_dir=self.path / "frames")
        tensors = self.state.tensors
        assembler.restore(tensors.get("held_frames"), int(tensors["frame_count"]), self.state.frame_chunks)
        return assembler.frames()


def read_source_run(path: Path) -> SourceRun:
    """The finished run in ``path``; InputError for a folder that holds none, or an unfinished one."""
    if not is_marked(path):
        raise InputError(
            f"{path} is a folder without {MARKER_FILE}: expected a framepack run directory or a video file"
        )
    state = load_run_state(path)
    if state is None:
        raise InputError(f"cannot extend {path}: its run finished no section ({STATE_FILE} is missing)")
    config, cache_known = _settings_config(state.fingerprint, path)
    plan = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
    if state.sections_done != plan.num_sections:
        raise InputError(
            f"cannot extend {path}: its run finished {state.sections_done} of {plan.num_sections} sections; "
            "finish it first (resume it), then extend it"
        )
    history = state.tensors["history"]
    expected = plan.resumed_latent_frames(plan.num_sections)
    if history.shape[:3] != (1, 16, expected):
        raise InputError(
            f"cannot extend {path}: expected {expected} latent frames [1, 16, {expected}, h, w] in its history, "
            f"got {list(history.shape)}"
        )
    if not (path / "frames").is_dir():
        raise InputError(f"cannot extend {path}: its frames/ folder is missing")
    return SourceRun(path, state, config, cache_known, plan)


def _settings_config(fingerprint: dict[str, Any], path: Path) -> tuple[GenerationConfig, bool]:
    """The run's ``GenerationConfig`` from its fingerprint's settings, and whether its cache was rebuilt."""
    settings = fingerprint.get("settings")
    if not isinstance(settings, dict):
        raise InputError(f"cannot extend {path}: its {STATE_FILE} has no settings")
    names = {f.name for f in fields(SamplingSettings)} - {"cache"}
    given = {k: v for k, v in settings.items() if k in names}
    given.update({k: settings[k] for k in ("resolution", "resize") if k in settings})
    cache = _rebuild_cache(settings.get("cache"))
    try:
        return GenerationConfig(**given, cache=cache), cache is not None or settings.get("cache") == "NoCache()"
    except (ConfigError, TypeError) as error:
        raise InputError(f"cannot extend {path}: the settings in its {STATE_FILE} are not valid ({error})") from error


def _rebuild_cache(description: object) -> CachePolicy | None:
    """The policy ``describe_policy`` described as ``Name(key=value, ...)``, when it is a built-in
    one whose description comes out the same again; None otherwise (and for ``NoCache()``)."""
    if not isinstance(description, str):
        return None
    try:
        call = ast.parse(description, mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
            return None
        cls = _CACHE_CLASSES.get(call.func.id)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        policy = None if cls is None else cls(**kwargs)
    except (SyntaxError, ValueError, TypeError, ConfigError):
        return None
    if policy is None or isinstance(policy, NoCache) or describe_policy(policy) != description:
        return None
    return policy


def recorded_prompt(path: Path) -> str | PromptSchedule | None:
    """The prompt (or schedule) a run directory's ``settings.json`` records; None when it has none
    (a run made before framepack wrote them: its fingerprint keeps only the prompt's digest)."""
    file = path / SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        prompt = read_settings(file)["inputs"].get("prompt")
    except InputError as error:
        raise InputError(f"cannot read the prompt the run in {path} was made with: {error}") from None
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict) and isinstance(prompt.get("schedule"), str):
        return parse_prompt_schedule(prompt["schedule"], blend_sections=prompt.get("blend_sections", 0))
    raise InputError(f"cannot read the prompt the run in {path} was made with: its {SETTINGS_FILE} has {prompt!r:.60}")


def sections_added(source: SourceRun, seconds: float) -> int:
    """Sections that extending the run by ``seconds`` adds: the count of a run of its length plus
    ``seconds`` minus its own, so that the result is that longer run (ConfigError when none)."""
    config = source.config
    check_seconds(seconds)
    total = plan_sections(config.seconds + seconds, fps=config.fps, window=config.window, mode="forward").num_sections
    added = total - source.plan.num_sections
    if added < 1:
        section = 4 * config.window / config.fps
        raise ConfigError(
            f"seconds: a {config.seconds:g} s run extended by {seconds:g} s is still {total} section(s) long, "
            f"as the run is; sections are {section:g} s here: add at least about {section / 2:g} s"
        )
    return added


def check_seconds(seconds: object) -> None:
    """Raise ConfigError unless ``seconds`` (the length to add) is a finite number > 0."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (math.isfinite(seconds) and seconds > 0)
    ):
        raise ConfigError(f"seconds: expected a finite number > 0 of seconds to add, got {seconds!r}")
