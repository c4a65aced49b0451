"""The section loop: a whole video of latents from ready conditioning, section by section.

``stream_latents`` yields a ``SectionResult`` per finished section; ``generate_latents``
runs it to the end and returns the video's latents in temporal order. Research code can use
either without any encoder or VAE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from ..cache.base import SectionStats
from ..conditioning import Conditioning
from ..errors import ConfigError, GenerationCancelled, GenerationInterrupted, InputError, NumericalError
from .control import SectionControl
from .guidance import BranchSplit, Denoising, GuidedDenoiser
from .schedule import flux_sigmas, sequence_length
from .sections import SectionHistory, SectionLayout, SectionPlan, plan_sections, section_image_embeds
from .settings import SamplingSettings
from .unipc import StepInfo, sample_unipc

LATENT_CHANNELS = 16


class SectionTransformer(Denoising, Protocol):
    """What the loop needs from a transformer: ``prepare`` once per section, ``denoise`` per call."""

    def prepare(self, conditioning: Conditioning, context: Any, latents_shape: tuple[int, ...]) -> Any: ...


@dataclass(frozen=True)
class Progress:
    """Where a generation stands, after one sampler step."""

    section: int
    num_sections: int
    step: int
    num_steps: int
    elapsed: float
    eta: float
    denoised: torch.Tensor  # the step's x0 prediction, for previews

    @property
    def fraction(self) -> float:
        return (self.section * self.num_steps + self.step + 1) / (self.num_sections * self.num_steps)


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class SectionResult:
    """One finished section.

    latents      the latents it added to the video, in temporal order (with the start latent on
                 the inverted loop's last section)
    history      every real latent generated so far, in temporal order
    cache_stats  the cache policy's calls computed and skipped in this section (None: no policy)
    """

    index: int
    num_sections: int
    layout: SectionLayout
    latents: torch.Tensor
    history: torch.Tensor
    seconds: float
    elapsed: float
    cache_stats: SectionStats | None = None

    @property
    def is_last(self) -> bool:
        return self.index == self.num_sections - 1


def stream_latents(
    transformer: SectionTransformer,
    conditioning: Conditioning,
    start_latent: torch.Tensor,
    config: SamplingSettings,
    *,
    negative: Conditioning | None = None,
    end_latent: torch.Tensor | None = None,
    end_image_embeds: torch.Tensor | None = None,
    control: SectionControl | None = None,
    callback: ProgressCallback | None = None,
    generator: torch.Generator | None = None,
    resume_history: torch.Tensor | None = None,
    sections_done: int = 0,
    branches: BranchSplit | None = None,
) -> Iterator[SectionResult]:
    """Generate section by section, yielding each finished one.

    config            the ``SamplingSettings``, or a ``GenerationConfig`` (which carries them);
                      the run samples with a fresh cache policy built from ``config.cache``
                      (``SamplingSettings.new_cache_policy``), started anew for every section, so
                      runs sharing a config share no state; each finished section's statistics
                      are on ``SectionResult.cache_stats``
    conditioning      used as given; its ``guidance`` must equal ``config.distilled_cfg``
    start_latent      [B, 16, 1, h, w] scaled VAE latent of the first frame (zeros: text-to-video)
    negative          text conditioning of the negative pass, required when ``config.real_cfg != 1``;
                      its image embeddings and guidance are taken from ``conditioning``
    end_latent        [B, 16, 1, h, w] last frame (inverted mode): the 1x context of the first
                      generated section, as kijai's end-frame sampler
    end_image_embeds  end image's embeddings; with them, image embeddings mix per
                      ``config.end_embed_mode`` / ``start_embed_strength`` (without, they are unchanged)
    control           per-section prompts and keyframes (``SectionControl``, by the section's place
                      in the video); a keyframe's embeddings stand in for the start image's before
                      any mix with the end image's
    callback          called after every sampler step; raise GenerationCancelled in it to stop
    generator         the noise source; by default a CPU generator seeded with ``config.seed``
    resume_history    to continue an interrupted run: the ``history`` of its last finished
    sections_done     section and how many sections had finished; ``generator`` must then be in
                      the state it had after that section
    branches          CFG parallelism: this process computes one guidance branch and exchanges
                      velocities with the process computing the other (framepack.distributed)

    A cancelled or failed run raises GenerationCancelled / GenerationInterrupted whose
    ``partial`` holds the real latents of the finished sections (None if none finished).
    Every section's latents are checked after every sampler step, in every dtype: inf or NaN
    raises NumericalError naming the section and the first step that produced them, with the
    same ``partial``; the bad section is never yielded.
    """
    config = _sampling_settings(config)
    weight = next(iter(transformer.parameters()))
    device, model_dtype = weight.device, weight.dtype
    plan = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
    start_latent = _check_latent("start_latent", start_latent, conditioning.batch_size).to(device, torch.float32)
    _check_guidance(conditioning, config)
    if end_latent is not None:
        if config.mode != "inverted":
            raise ConfigError(
                f"end_latent: only the 'inverted' mode can end on a given frame, got mode {config.mode!r}"
            )
        end_latent = _check_latent("end_latent", end_latent, conditioning.batch_size, like=start_latent)
        end_latent = end_latent.to(device, torch.float32)
    if end_image_embeds is not None and (end_latent is None or conditioning.image_embeds is None):
        raise InputError("end_image_embeds: given without an end_latent or without conditioning.image_embeds")
    if control is not None:
        control.check(plan.num_sections)
        control = control.to(device)
    if config.real_cfg != 1.0 and negative is None:
        raise ConfigError(f"real_cfg is {config.real_cfg}: real CFG needs a negative Conditioning, got None")
    policy = config.new_cache_policy()
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(config.seed)

    batch, _, _, height, width = start_latent.shape
    noise_shape = (batch, LATENT_CHANNELS, config.window, height, width)
    # The shift rule counts tokens from the pixel size of one window, as the reference.
    seq_len = sequence_length(plan.window_pixel_frames, height * 8, width * 8)
    sigmas = flux_sigmas(config.steps, seq_len, config.shift)
    conditioning = conditioning.to(device)
    history = SectionHistory(config.mode, start_latent)
    if not 0 <= sections_done <= plan.num_sections:
        raise InputError(f"sections_done: expected 0..{plan.num_sections}, got {sections_done}")
    if resume_history is not None:
        expected = plan.resumed_latent_frames(sections_done)
        if (
            resume_history.ndim != 5
            or resume_history.shape[2] != expected
            or resume_history.shape[3:] != start_latent.shape[3:]
        ):
            raise InputError(
                f"resume_history: expected {expected} latent frames of {list(start_latent.shape[3:])} after "
                f"{sections_done} section(s), got shape {list(resume_history.shape)}"
            )
        history.latents = resume_history.to(device, torch.float32)
    clock = _Clock(plan.num_sections, config.steps, first_section=sections_done)

    for layout in plan.sections[sections_done:]:
        section_started = time.perf_counter()
        steps = _FiniteSteps(
            None if callback is None else clock.step_callback(callback, layout.index, plan.num_sections)
        )
        try:
            positive = conditioning if control is None else control.conditioning(layout.video_index, conditioning)
            positive = _section_conditioning(positive, end_image_embeds, config, layout, plan)
            context = history.context(
                layout,
                end_latent=_end_slot(end_latent, layout, config),
                start=_start_slot(start_latent, control, layout, config),
            )
            prepared_positive = transformer.prepare(positive, context, noise_shape)
            prepared_negative = None
            if config.real_cfg != 1.0:
                negative_section = replace(
                    positive, text_embeds=negative.text_embeds, text_mask=negative.text_mask, pooled=negative.pooled
                ).to(device)
                prepared_negative = transformer.prepare(negative_section, context, noise_shape)
            if policy is not None:
                policy.start_section(config.steps)
            denoiser = GuidedDenoiser(
                transformer,
                prepared_positive,
                prepared_negative,
                real_cfg=config.real_cfg,
                cfg_rescale=config.cfg_rescale,
                cache=policy,
                branches=branches,
            )
            noise = torch.randn(noise_shape, generator=generator, device=generator.device, dtype=torch.float32)
            generated = sample_unipc(
                denoiser,
                noise.to(device),
                sigmas,
                variant=config.variant,
                callback=steps,
            )
        except GenerationCancelled as exc:
            raise GenerationCancelled(
                f"generation cancelled in section {layout.index} of {plan.num_sections}; "
                f"{layout.index} finished section(s) kept in .partial",
                partial=_finished(history, layout),
            ) from exc
        except NumericalError as exc:  # e.g. float16's guard inside the transformer
            raise NumericalError(
                f"section {layout.index + 1}/{plan.num_sections}, sampler step {steps.recorded + 1}/{config.steps}: "
                f"{exc}; {layout.index} finished section(s) kept in .partial",
                partial=_finished(history, layout),
            ) from exc
        except Exception as exc:
            if layout.index == 0:
                raise
            raise GenerationInterrupted(
                f"section {layout.index} of {plan.num_sections} failed ({type(exc).__name__}: {exc}); "
                f"{layout.index} finished section(s) kept in .partial",
                partial=_finished(history, layout),
            ) from exc
        bad_step = steps.first_nonfinite()
        if bad_step is not None:
            raise NumericalError(
                f"section {layout.index + 1}/{plan.num_sections}: expected finite latents, but sampler step "
                f"{bad_step + 1}/{config.steps} made them inf or NaN (a guidance scale too large for {model_dtype}, "
                f"non-finite weights, or a cache policy returning non-finite values); "
                f"{layout.index} finished section(s) kept in .partial",
                partial=_finished(history, layout),
            )
        stats = None if policy is None else policy.finish_section()
        added = history.add(layout, generated)
        now = time.perf_counter()
        yield SectionResult(
            layout.index,
            plan.num_sections,
            layout,
            added,
            history.latents,
            now - section_started,
            now - clock.started,
            stats,
        )


def generate_latents(
    transformer: SectionTransformer,
    conditioning: Conditioning,
    start_latent: torch.Tensor,
    config: SamplingSettings,
    *,
    negative: Conditioning | None = None,
    end_latent: torch.Tensor | None = None,
    end_image_embeds: torch.Tensor | None = None,
    control: SectionControl | None = None,
    callback: ProgressCallback | None = None,
    generator: torch.Generator | None = None,
    branches: BranchSplit | None = None,
) -> torch.Tensor:
    """The whole video's latents [B, 16, T, h, w] in temporal order (T = sections·window + 1).

    Arguments as ``stream_latents``; on cancellation or failure the raised exception's
    ``partial`` holds the finished sections.
    """
    result = None
    for result in stream_latents(  # noqa: B007 (the last section's result is the answer)
        transformer,
        conditioning,
        start_latent,
        config,
        negative=negative,
        end_latent=end_latent,
        end_image_embeds=end_image_embeds,
        control=control,
        callback=callback,
        generator=generator,
        branches=branches,
    ):
        pass
    assert result is not None  # a plan always has at least one section
    return result.history


def _sampling_settings(config: object) -> SamplingSettings:
    """The sampling settings of ``config``: a SamplingSettings, or a GenerationConfig's ``.sampling``."""
    settings = getattr(config, "sampling", None)
    if not isinstance(settings, SamplingSettings):
        raise ConfigError(f"config: expected SamplingSettings or a GenerationConfig, got {type(config).__name__}")
    return settings


def _check_latent(name: str, latent: object, batch: int, like: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(latent, torch.Tensor) or not latent.is_floating_point():
        raise InputError(f"{name}: expected a float tensor [B, 16, 1, h, w], got {type(latent).__name__}")
    expected = (batch, LATENT_CHANNELS, 1) if like is None else tuple(like.shape)
    if latent.ndim != 5 or tuple(latent.shape[: len(expected)]) != expected:
        want = f"[{batch}, {LATENT_CHANNELS}, 1, h, w]" if like is None else str(list(like.shape))
        raise InputError(f"{name}: expected shape {want}, got {list(latent.shape)}")
    return latent


def _check_guidance(conditioning: Conditioning, config: SamplingSettings) -> None:
    values = conditioning.guidance.detach().float().cpu()
    if not torch.all(values == config.distilled_cfg):
        raise ConfigError(
            f"conditioning.guidance is {values.tolist()} but config.distilled_cfg is {config.distilled_cfg}; "
            "build the Conditioning with guidance = distilled_cfg"
        )


def _section_conditioning(
    conditioning: Conditioning,
    end_image_embeds: torch.Tensor | None,
    config: SamplingSettings,
    layout: SectionLayout,
    plan: SectionPlan,
) -> Conditioning:
    if end_image_embeds is None:
        return conditioning
    start = conditioning.image_embeds
    embeds = section_image_embeds(
        start,
        end_image_embeds.to(start),
        mode=config.end_embed_mode,
        strength=config.start_embed_strength,
        index=layout.index,
        count=plan.num_sections,
    )
    return replace(conditioning, image_embeds=embeds)


def _end_slot(end_latent: torch.Tensor | None, layout: SectionLayout, config: SamplingSettings) -> torch.Tensor | None:
    """The end frame's latent × ``end_strength`` in the 1x slot of the first generated section
    (at strength 1 the latent itself, without a copy)."""
    if end_latent is None or layout.index != 0:
        return None
    return end_latent if config.end_strength == 1.0 else end_latent * config.end_strength


def _start_slot(
    start_latent: torch.Tensor, control: SectionControl | None, layout: SectionLayout, config: SamplingSettings
) -> torch.Tensor | None:
    """The start-frame slot's latent: the section's keyframe or the start latent, × ``start_strength``;
    None keeps the start latent. At strength 1 nothing is multiplied, which saves a copy (x · 1.0
    would be exact too)."""
    keyframe = None if control is None else control.start_slot(layout.video_index)
    if config.start_strength == 1.0:
        return keyframe
    return (start_latent if keyframe is None else keyframe) * config.start_strength


def _finished(history: SectionHistory, running: SectionLayout) -> torch.Tensor | None:
    return history.latents if running.index > 0 else None


class _FiniteSteps:
    """A sampler step callback that flags, on the device, each step whose latents hold inf or NaN,
    then calls ``then``; ``first_nonfinite`` reads every flag of the section in one copy.

    A step is flagged when the sampler's state or the step's x0 prediction (the section's
    result, on the last step) is not finite. Flags say "non-finite": the zeros a dry run reads
    back for device values (framepack.dry_run) then mean a finite section.
    """

    def __init__(self, then: Callable[[StepInfo], None] | None) -> None:
        self._then = then
        self._flags: list[torch.Tensor] = []

    @property
    def recorded(self) -> int:
        return len(self._flags)

    def __call__(self, info: StepInfo) -> None:
        finite = torch.isfinite(info.x).all().logical_and(torch.isfinite(info.denoised).all())
        self._flags.append(finite.logical_not())
        if self._then is not None:
            self._then(info)

    def first_nonfinite(self) -> int | None:
        """The first flagged step (0-based), or None; the section's one read of the device."""
        flags = torch.stack(self._flags).cpu().tolist()
        return flags.index(True) if True in flags else None


class _Clock:
    """Elapsed time and ETA over every step of every section."""

    def __init__(self, num_sections: int, steps: int, *, first_section: int = 0) -> None:
        self.first_section = first_section  # sections before it were done by an earlier run
        self.total_steps = (num_sections - first_section) * steps
        self.started = time.perf_counter()

    def step_callback(self, callback: ProgressCallback, section: int, num_sections: int) -> Callable[[StepInfo], None]:
        def on_step(info: StepInfo) -> None:
            elapsed = time.perf_counter() - self.started
            done = (section - self.first_section) * info.num_steps + info.step + 1
            eta = elapsed / done * (self.total_steps - done)
            callback(Progress(section, num_sections, info.step, info.num_steps, elapsed, eta, info.denoised))

        return on_step
