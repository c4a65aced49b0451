"""How long a generation takes and how much memory it needs, before running it.

``estimate(config, profile, ...)`` counts the work from the configs and the section plan
(``flops.py``), plans the memory as the pipeline would (``memory.py``) and turns both into
seconds with a device's rates (``profiles.py`` or ``measure.py``):

* a step (per denoising call) costs ``max(compute, copy)``: the streamer copies the next
  blocks while the current ones compute, so the slower of the two sets the pace. With a
  measured profile compute is each block's timed fixed cost + its FLOPs at its timed rate,
  and the same for the rest of the call (``timing.py``), plus a timed UniPC step; with a
  table profile it is matmul FLOPs / matmul rate + attention FLOPs / attention rate +
  element-wise bytes / bandwidth + kernels x launch overhead. Copy is the streamed block
  bytes / host->device rate. A step a cache skips runs everything but the block stack and
  copies nothing.
* a section adds its step-invariant inputs (``prepare``), the VAE decode of its latents and,
  when components swap per phase, copying the transformer and the VAE back to the device.
* a run adds reading the weights from disk, copying them to the device, and the encoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..config import GenerationConfig
from ..errors import ConfigError
from ..models.transformer import TransformerConfig
from ..models.vae import VAEConfig
from ..prompt import MAX_PROMPT_TOKENS, TEMPLATE_CROP_START
from ..sampling.sections import SectionPlan, plan_sections
from ..units import format_bytes
from ..video.buckets import find_bucket
from .caching import computed_share
from .flops import CallShape, Flops, block_flops, call_flops, prepare_flops
from .memory import MemoryEstimate, ModelConfigs, estimate_memory
from .profiles import DeviceProfile
from .vae_flops import (
    decode_tile_frames,
    decode_tiles_flops,
    image_encoder_flops,
    spatially_tiled,
    text_encoders_flops,
    vae_encode_flops,
)

# Text tokens assumed when no prompt is given: a two-sentence prompt (the README's examples are 15-40).
ASSUMED_TEXT_TOKENS = 64
# Element-wise passes over a token's stream width per block, counted from transformer_blocks.py:
# double: 2 layer norms and 2 modulations (read+write each: 8), q/k norm + RoPE (2 of the 3
# q|k|v widths, read+write: 4), 4 gated residual adds (read 2, write 1: 12), GELU on the 4x MLP
# width (read+write: 8); single: 1 norm + 1 modulation (4), q/k norm + RoPE (4), GELU (8),
# attention output into place (2), 1 gated add (3).
DOUBLE_BLOCK_PASSES = 34
SINGLE_BLOCK_PASSES = 21


@dataclass(frozen=True)
class Seconds:
    """Where the time of a run goes."""

    load: float  # weights from disk and onto the device, once
    encoders: float  # text, image and VAE encoders, once
    step: float  # one sampler step, everything computed (both CFG calls)
    sampling: float  # every step of every section, with the cache's share
    prepare: float  # every section's step-invariant inputs
    decode: float  # every section's VAE decode
    swaps: float  # components copied back to the device between phases, every section
    video: float  # the mp4, and on a host profile the previews (encoded beside the sampling, on the same cores)

    @property
    def total(self) -> float:
        return self.load + self.encoders + self.sampling + self.prepare + self.decode + self.swaps + self.video


@dataclass(frozen=True)
class CostEstimate:
    """Everything ``estimate`` worked out for one configuration."""

    models: str
    profile: DeviceProfile
    plan: SectionPlan
    bucket: tuple[int, int]  # pixels
    shape: CallShape
    text_assumed: bool
    steps: int  # per section
    noisy_tokens: int
    calls_per_step: int
    computed_share: float
    cache_note: str
    step_flops: Flops  # one step, every call computed
    stack_flops: Flops  # the part of one call a cache skips
    prepare_flops: Flops  # per section
    decode: Flops  # every section's decodes together
    encoders: Flops  # text (and negative), image, VAE encode
    video_flops: int  # everything
    memory: MemoryEstimate
    copy_seconds_per_call: float
    compute_seconds_per_call: float
    seconds: Seconds
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        s, m = self.seconds, self.memory
        noisy, clean = self.noisy_tokens, self.shape.clean()
        lines = [
            f"tokens per call at the {self.bucket[0]}x{self.bucket[1]} bucket: {noisy} noisy + {clean} packed context"
            f" + {self.shape.image_tokens} image + {self.shape.text_tokens} text"
            + (" (text assumed: give --text-tokens or a prompt)" if self.text_assumed else ""),
            f"models: {self.models}; device: {self.profile.name} ({self.profile.source} rates)",
            "FLOPs:",
            f"  per step: {_tflop(self.step_flops.total)} ({self.calls_per_step} call(s): matmul "
            f"{_tflop(self.step_flops.matmul)}, attention {_tflop(self.step_flops.attention)}; "
            f"block stack {_tflop(self.stack_flops.total * self.calls_per_step)})",
            f"  steps computing the stack: {self.computed_share:.0%} ({self.cache_note})",
            f"  per section: sampling {_tflop(self._section_sampling_flops())}, "
            f"VAE decode {_tflop(self.decode.total / self.plan.num_sections)}",
            f"  per video: {_tflop(self.video_flops)} (encoders {_tflop(self.encoders.total)}, "
            f"VAE decode {_tflop(self.decode.total)})",
            "memory:",
            *("  " + line for line in str(m.plan).splitlines()),
            "  weights: " + ", ".join(f"{n} {format_bytes(b)}" for n, b in m.weight_bytes.items()),
            f"  host RAM for the weights: {format_bytes(m.host_bytes)} with copy storage; "
            "with --mmap they stay in the page cache (the OS may drop them)",
        ]
        if not self.profile.is_host:
            lines.append(
                f"  copied host->device per step: {format_bytes(m.streamed_bytes_per_call * self.calls_per_step)}"
                f" ({self.copy_seconds_per_call * self.calls_per_step:.2f} s; compute "
                f"{self.compute_seconds_per_call * self.calls_per_step:.2f} s)"
            )
            lines.append(f"  peak device memory: {format_bytes(m.peak_device_bytes)}")
        else:
            lines.append(
                f"  host RAM beside the weights at the peak: {format_bytes(m.host_activation_bytes)} "
                f"(every phase's working set: the allocator keeps what each frees; the largest alone "
                f"{format_bytes(m.peak_activation_bytes)})"
            )
        lines += [
            "time:",
            f"  load {format_seconds(s.load)}, encoders {format_seconds(s.encoders)}, per step {format_seconds(s.step)}",
            f"  sampling {format_seconds(s.sampling)}, prepare {format_seconds(s.prepare)}, VAE decode {format_seconds(s.decode)}"
            + (f", swaps {format_seconds(s.swaps)}" if s.swaps else "")
            + f", mp4 and previews {format_seconds(s.video)}",
            f"  predicted total: {format_seconds(s.total)}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def _section_sampling_flops(self) -> int:
        skipped = (1 - self.computed_share) * self.stack_flops.total * self.calls_per_step
        return int((self.step_flops.total - skipped) * self.steps)


def _tflop(flops: float) -> str:
    return f"{flops / 1e12:.3g} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.3g} GFLOP"


def format_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s"


def _compute_seconds(profile: DeviceProfile, flops: Flops, elementwise_bytes: float) -> float:
    return (
        flops.matmul / profile.matmul_flops
        + flops.attention / profile.attention_flops
        + elementwise_bytes / profile.memory_bandwidth
        + flops.kernels * profile.kernel_overhead_s
    )


def _call_seconds(
    profile: DeviceProfile, t: TransformerConfig, shape: CallShape, dtype: torch.dtype
) -> tuple[float, float]:
    """(the block stack's seconds, the rest of the call's) of one transformer call: from the timed
    blocks of a measured profile (``call_probe.py``), else from the FLOP and byte rates."""
    around, stack = call_flops(t, shape)
    timing = profile.call_timing
    if timing is not None:
        blocks = block_flops(t, shape)
        double = sum(timing.double.seconds(f.total) for f in blocks[: t.num_layers])
        single = sum(timing.single.seconds(f.total) for f in blocks[t.num_layers :])
        return double + single, timing.around.seconds(around.total)
    stream_bytes = dtype.itemsize if dtype != torch.float16 else 4  # float16 weights keep a float32 stream
    tokens = shape.image_stream(t) + shape.context_stream()
    passes = DOUBLE_BLOCK_PASSES * t.num_layers + SINGLE_BLOCK_PASSES * t.num_single_layers
    return _compute_seconds(profile, stack, tokens * t.inner_dim * stream_bytes * passes), _compute_seconds(
        profile, around, 0
    )


def _vae_seconds(profile: DeviceProfile, flops: Flops, rate: float) -> float:
    """A VAE pass at ``rate`` FLOPs per second: a measured profile's is a real encode's or decode's
    (its norms, activations and copies included); a table's, its convolutions'."""
    return flops.total / rate + flops.kernels * profile.kernel_overhead_s


def _dtypes(profile: DeviceProfile, dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """(transformer dtype, everything else's) as ``precision.default_dtype`` picks them."""
    if profile.is_host:
        default = torch.float32
    else:
        default = torch.bfloat16 if profile.bf16_native else torch.float16
    chosen = dtype or default
    return chosen, chosen


def encoded_pixel_frames(plan: SectionPlan, host: bool) -> float:
    """Frames the run's H.264 encoder writes: the video once, and on a host the previews of the
    video so far after every section but the last (``pipeline`` supersedes that one with the video),
    taken as an equal share of the frames per section. On a GPU the previews encode on the host's
    cores while the device samples: no time added."""
    previews = sum(k / plan.num_sections for k in range(1, plan.num_sections)) if host else 0.0
    return plan.pixel_frames * (1 + previews)


def host_decode_bytes(profile: DeviceProfile, models: ModelConfigs, plan: SectionPlan, bucket: tuple[int, int]) -> int:
    """Host bytes a CPU decode holds at its peak, from the measured bytes per output pixel of a
    temporal tile (at the largest tile), plus the float32 pixels of the whole section it returns."""
    if profile.decode_bytes_per_pixel is None:
        return 0
    r, area = models.vae.temporal_compression_ratio, bucket[0] * bucket[1]
    frames = decoded_latent_frames(plan)
    tile = max(1 + r * (t - 1) for n in frames for t in decode_tile_frames(models.vae, n))
    section = max(1 + r * (n - 1) for n in frames)
    return int(profile.decode_bytes_per_pixel * tile * area + models.vae.out_channels * 4 * section * area)


def decode_tile_sizes(config: GenerationConfig, vae: VAEConfig) -> list[int]:
    """Latent frames of the temporal tiles a run of ``config`` decodes, each size once."""
    plan = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
    return sorted({n for frames in decoded_latent_frames(plan) for n in decode_tile_frames(vae, frames)})


def decode_tile_factors(profile: DeviceProfile, vae: VAEConfig, shape: CallShape, tiled: bool) -> dict[int, float]:
    """The profile's measured factors of temporal tile sizes (latent frames -> factor), where they
    hold: for a decode of the latent size they were timed at, not cut into spatial tiles."""
    same_size = profile.decode_tile_latent == (shape.height, shape.width)
    if not same_size or spatially_tiled(vae, shape.height, shape.width, tiled):
        return {}
    return dict(profile.decode_tile_factors)


def decoded_latent_frames(plan: SectionPlan) -> list[int]:
    """Latent frames each section decodes (``pipeline._latents_to_decode``): the first all its
    history, a later one its own window plus its neighbour's (and the start latent, inverted, last)."""
    w, frames = plan.window, []
    for layout in plan.sections:
        last = layout.index == plan.num_sections - 1
        if plan.mode == "forward":
            frames.append(1 + w if layout.index == 0 else 2 * w)
        else:
            frames.append((w if layout.index == 0 else 2 * w) + (1 if last else 0))
    return frames


def call_shape(
    config: GenerationConfig,
    models: ModelConfigs,
    image_size: tuple[int, int],
    text_tokens: int | None = None,
    with_image: bool = True,
) -> CallShape:
    """The token counts of one of the run's transformer calls (``text_tokens`` None: ``ASSUMED_TEXT_TOKENS``)."""
    bucket = find_bucket(*image_size, config.resolution)
    t = models.transformer
    n_text = ASSUMED_TEXT_TOKENS if text_tokens is None else text_tokens
    n_image = models.image_encoder.num_patches if with_image and t.has_image_proj else 0
    return CallShape(config.window, bucket[0] // 8, bucket[1] // 8, n_text, n_image)


def estimate(
    config: GenerationConfig,
    profile: DeviceProfile,
    *,
    models: ModelConfigs | None = None,
    image_size: tuple[int, int] = (480, 640),
    text_tokens: int | None = None,
    vram_budget_gb: float | None = None,
    dtype: torch.dtype | None = None,
    fp8: bool = False,
    with_image: bool = True,
    from_disk: bool = True,
) -> CostEstimate:
    """Time and memory of generating ``config`` from an image of ``image_size`` (H, W) on ``profile``.

    ``text_tokens``: the prompt's Llama tokens (None: ``ASSUMED_TEXT_TOKENS``, said so in the
    estimate). ``from_disk=False`` leaves out reading the weights (models built in memory).
    """
    models = models or ModelConfigs.real()
    if text_tokens is not None and not 1 <= text_tokens <= MAX_PROMPT_TOKENS:
        raise ConfigError(
            f"text_tokens: expected 1 to {MAX_PROMPT_TOKENS} (the prompt's kept tokens), got {text_tokens}"
        )
    if profile.is_host and vram_budget_gb is not None:
        raise ConfigError(f"vram_budget_gb: a budget is for a GPU; the {profile.name!r} profile computes on the host")
    transformer_dtype, other_dtype = _dtypes(profile, dtype)
    plan = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode)
    bucket = find_bucket(*image_size, config.resolution)
    t = models.transformer
    shape = call_shape(config, models, image_size, text_tokens, with_image)
    n_text = shape.text_tokens
    around, stack = call_flops(t, shape)
    calls = 2 if config.real_cfg != 1.0 else 1
    share, cache_note = computed_share(config.cache, config.steps)

    device = torch.device("cpu" if profile.is_host else "cuda")
    memory = estimate_memory(
        models,
        transformer_dtype=transformer_dtype,
        dtype=other_dtype,
        fp8=fp8,
        vram_budget_gb=vram_budget_gb,
        resolution=config.resolution,
        window=config.window,
        device=device,
    )
    if profile.is_host:  # a measured CPU encode's and decode's working sets, where they exceed the planner's
        decode_bytes = max(memory.activation_bytes["decode"], host_decode_bytes(profile, models, plan, bucket))
        image_bytes = memory.activation_bytes["image"]
        if with_image and profile.encode_bytes_per_pixel is not None:
            image_bytes = max(image_bytes, int(profile.encode_bytes_per_pixel * bucket[0] * bucket[1]))
        memory = replace(
            memory, activation_bytes={**memory.activation_bytes, "decode": decode_bytes, "image": image_bytes}
        )
    if profile.memory_bytes is not None and memory.peak_device_bytes > profile.memory_bytes:
        notes = [
            f"the plan needs {format_bytes(memory.peak_device_bytes)}, more than the card's "
            f"{format_bytes(profile.memory_bytes)}: give --vram-budget"
        ]
    else:
        notes = []
    if profile.call_timing is not None and profile.call_timing.proxy is not None:
        notes.append(
            f"the transformer call was timed on {profile.call_timing.proxy}; its rates stand for the real ones"
        )

    stack_s, around_s = _call_seconds(profile, t, shape, transformer_dtype)
    copy_s = 0.0 if profile.is_host else memory.streamed_bytes_per_call / profile.host_to_device  # type: ignore[operator]
    computed_call = max(stack_s, copy_s) + around_s
    skipped_call = around_s
    steps = config.steps * plan.num_sections
    sampler_s = 0.0 if profile.call_timing is None else profile.call_timing.sampler_step_s
    sampling_s = steps * (calls * (share * computed_call + (1 - share) * skipped_call) + sampler_s)

    decode, decode_s = Flops(), 0.0
    factors = decode_tile_factors(profile, models.vae, shape, memory.plan.vae_tiling)
    for frames in decoded_latent_frames(plan):
        for n, tile in decode_tiles_flops(models.vae, frames, shape.height, shape.width, memory.plan.vae_tiling):
            decode += tile
            decode_s += factors.get(n, 1.0) * (
                profile.decode_tile_fixed_s + _vae_seconds(profile, tile, profile.conv_flops)
            )
    prompts = 2 if calls == 2 else 1  # real CFG encodes the negative prompt too
    llama_tokens = TEMPLATE_CROP_START + n_text
    encoders = text_encoders_flops(models.text_encoder, models.text_encoder_2, llama_tokens) * prompts
    vae_encode = Flops()  # the start image's, timed at its own rate
    if with_image:
        encoders += image_encoder_flops(models.image_encoder)
        vae_encode = vae_encode_flops(models.vae, *bucket)
    prepare = prepare_flops(t, shape) * calls

    weights = sum(memory.weight_bytes.values())
    load_s = weights / profile.disk_read if from_disk else 0.0
    swaps_s = 0.0
    if not profile.is_host:
        load_s += weights / profile.host_to_device  # type: ignore[operator]
        if memory.plan.swap_components:  # the transformer's resident part and the VAE come back every section
            transformer_device = memory.plan.phase_device_bytes["sampling"] - memory.activation_bytes["sampling"]
            swaps_s = plan.num_sections * (transformer_device + memory.weight_bytes["vae"]) / profile.host_to_device  # type: ignore[operator]
    seconds = Seconds(
        load=load_s,
        encoders=_compute_seconds(profile, encoders, 0)
        + _vae_seconds(profile, vae_encode, profile.vae_encode_flops or profile.conv_flops),
        step=calls * computed_call,
        sampling=sampling_s,
        prepare=plan.num_sections * _compute_seconds(profile, prepare, 0),
        decode=decode_s,
        swaps=swaps_s,
        video=encoded_pixel_frames(plan, profile.is_host) * bucket[0] * bucket[1] / profile.video_encode_pixels,
    )
    step_flops = (around + stack) * calls
    stack_total = steps * calls * share * stack.total
    video_flops = int(
        steps * calls * around.total
        + stack_total
        + plan.num_sections * prepare.total
        + decode.total
        + encoders.total
        + vae_encode.total
    )
    result = CostEstimate(
        models=models.name,
        profile=profile,
        plan=plan,
        bucket=bucket,
        shape=shape,
        text_assumed=text_tokens is None,
        steps=config.steps,
        noisy_tokens=shape.noisy(t),
        calls_per_step=calls,
        computed_share=share,
        cache_note=cache_note,
        step_flops=step_flops,
        stack_flops=stack,
        prepare_flops=prepare,
        decode=decode,
        encoders=encoders + vae_encode,
        video_flops=video_flops,
        memory=memory,
        copy_seconds_per_call=copy_s,
        compute_seconds_per_call=stack_s + around_s,
        seconds=seconds,
        notes=notes,
    )
    return result
