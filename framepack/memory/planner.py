"""Plan a whole pipeline's device memory from a budget: pure arithmetic, no tensors.

The pipeline runs in four phases, each using some components (``PHASES``). The rule:

1. ``vram_budget_gb=None``: every component stays on the device for the whole run; no
   streaming, no VAE tiling.
2. A budget that holds every component's weights plus the largest phase's activations:
   the same, everything resident.
3. Otherwise components *swap*: each phase has the device to itself (its components are
   loaded for it and unloaded after). Per phase, device bytes are
   ``activations + whole components + streamed component's plan``:
   * the VAE tiles (both phases that use it) if an untiled VAE phase would exceed the
     budget; tiled VAE phases then count ``tiled_vae_activation_bytes`` (one number for
     both phases, or one per phase);
   * a component given with ``block_bytes`` (the transformer, the Llama encoder) gets
     whatever the rest of its phase leaves and ``plan_residency`` decides which of its
     blocks stream;
   * a phase that cannot fit even when streaming every block raises ``ConfigError``
     naming the phase and the smallest budget it needs.

``reserve_bytes`` is kept out of the budget before any of this: memory a device needs that
no tensor of ours holds (the CUDA context, library workspaces, allocator fragmentation).
Every phase's bytes, plus the reserve, stay within the budget.

Budgets are in GiB (2**30 bytes), as CUDA tools report memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..models.llama import HIDDEN_STATE_INDEX
from ..models.packing import packed_tokens
from ..prompt import MAX_PROMPT_TOKENS, TEMPLATE_CROP_START, TEXT_EMBED_LENGTH
from ..units import GIB, format_bytes
from ..video.buckets import BASE_RESOLUTION, BUCKETS_640, find_bucket
from .residency import ComponentSize, ModuleTensors
from .streamer import ResidencyPlan, minimum_budget, plan_residency

PHASES: dict[str, tuple[str, ...]] = {
    "text": ("text_encoder", "text_encoder_2"),
    "image": ("vae", "image_encoder"),
    "sampling": ("transformer",),
    "decode": ("vae",),
}
VAE_PHASES = ("image", "decode")


@dataclass(frozen=True)
class MemoryPlan:
    """What the pipeline does with its device budget."""

    budget_bytes: int | None
    swap_components: bool
    vae_tiling: bool
    streaming: dict[str, ResidencyPlan] = field(default_factory=dict)
    phase_device_bytes: dict[str, int] = field(default_factory=dict)
    reserve_bytes: int = 0

    def __str__(self) -> str:
        budget = "no budget" if self.budget_bytes is None else f"budget {format_bytes(self.budget_bytes)}"
        if self.reserve_bytes:
            budget += f" ({format_bytes(self.reserve_bytes)} of it reserved)"
        lines = [
            f"{budget}: components {'swap per phase' if self.swap_components else 'stay resident'}, "
            f"VAE tiling {'on' if self.vae_tiling else 'off'}"
        ]
        lines += [f"  {phase}: {format_bytes(n)} on the device" for phase, n in self.phase_device_bytes.items()]
        lines += [f"  {name}: {plan}" for name, plan in self.streaming.items()]
        return "\n".join(lines)


def plan_pipeline_memory(
    vram_budget_gb: float | None,
    component_bytes: Mapping[str, int | ComponentSize],
    activation_estimate_bytes: Mapping[str, int],
    *,
    tiled_vae_activation_bytes: int | Mapping[str, int] | None = None,
    prefetch: int = 1,
    reserve_bytes: int = 0,
) -> MemoryPlan:
    """Apply the module's rule. ``component_bytes`` names components as in ``PHASES`` (an int
    is a component that never streams); ``activation_estimate_bytes`` gives each phase's
    peak activations (untiled for the VAE phases)."""
    sizes = _sizes(component_bytes)
    phases = {p: tuple(c for c in names if c in sizes) for p, names in PHASES.items()}
    phases = {p: names for p, names in phases.items() if names}
    missing = sorted(p for p in phases if p not in activation_estimate_bytes)
    if missing:
        raise ConfigError(f"activation_estimate_bytes lacks phase(s) {missing}; phases in use: {sorted(phases)}")
    activations = {p: int(activation_estimate_bytes[p]) for p in phases}
    total = sum(s.total_bytes for s in sizes.values())
    requested = None if vram_budget_gb is None else int(vram_budget_gb * GIB)
    if requested is not None and requested <= 0:
        raise ConfigError(f"vram_budget_gb must be > 0 or None (no budget), got {vram_budget_gb}")
    if requested is not None and requested <= reserve_bytes:
        raise ConfigError(
            f"vram_budget_gb={vram_budget_gb} does not cover the {format_bytes(reserve_bytes)} every device run "
            "reserves (CUDA context, workspaces, fragmentation); give more"
        )
    budget = None if requested is None else requested - reserve_bytes

    if budget is None or total + max(activations.values(), default=0) <= budget:
        streaming = {n: plan_residency(s.block_bytes, None, prefetch) for n, s in sizes.items() if s.block_bytes}
        phase_bytes = {p: total + a for p, a in activations.items()}
        return MemoryPlan(requested, False, False, streaming, phase_bytes, reserve_bytes)

    whole = {
        p: sum(sizes[c].total_bytes if not sizes[c].block_bytes else sizes[c].fixed_bytes for c in names)
        for p, names in phases.items()
    }
    vae_tiling = any(whole[p] + activations[p] > budget for p in VAE_PHASES if p in phases)
    if vae_tiling:
        if tiled_vae_activation_bytes is None:
            raise ConfigError("the VAE needs tiling to fit the budget: pass tiled_vae_activation_bytes")
        tiled = tiled_vae_activation_bytes
        activations.update({p: int(tiled if isinstance(tiled, int) else tiled[p]) for p in VAE_PHASES if p in phases})

    streaming: dict[str, ResidencyPlan] = {}
    phase_bytes: dict[str, int] = {}
    for phase, names in phases.items():
        fixed = activations[phase] + whole[phase]
        streamable = [c for c in names if sizes[c].block_bytes]
        if len(streamable) > 1:
            raise ConfigError(f"phase {phase!r} has several streamable components {streamable}; at most one")
        blocks = sizes[streamable[0]].block_bytes if streamable else ()
        need = fixed + minimum_budget(blocks, prefetch)
        if need > budget:
            raise ConfigError(
                f"vram_budget_gb={vram_budget_gb} is too small for the {phase} phase: it needs at least "
                f"{format_bytes(need + reserve_bytes)} ({need + reserve_bytes} bytes: reserve "
                f"{format_bytes(reserve_bytes)}, activations {format_bytes(activations[phase])}, "
                f"whole components {format_bytes(whole[phase])}"
                + (f", {streamable[0]} streaming with prefetch={prefetch})" if streamable else ")")
            )
        if streamable:
            streaming[streamable[0]] = plan_residency(blocks, budget - fixed, prefetch)
            fixed += streaming[streamable[0]].device_bytes
        phase_bytes[phase] = fixed
    return MemoryPlan(requested, True, vae_tiling, streaming, phase_bytes, reserve_bytes)


def _sizes(component_bytes: Mapping[str, int | ComponentSize]) -> dict[str, ComponentSize]:
    known = {c for names in PHASES.values() for c in names}
    unknown = sorted(set(component_bytes) - known)
    if unknown:
        raise ConfigError(f"unknown component(s) {unknown}; known components are {sorted(known)}")
    sizes = {n: s if isinstance(s, ComponentSize) else ComponentSize(int(s)) for n, s in component_bytes.items()}
    negative = sorted(n for n, s in sizes.items() if s.fixed_bytes < 0 or any(b < 0 for b in s.block_bytes))
    if negative:
        raise ConfigError(f"component sizes must be >= 0 bytes; negative for {negative}")
    return sizes


# --- the pipeline's numbers: component sizes and activation estimates -------------------

TEXT_TOKENS = TEMPLATE_CROP_START + MAX_PROMPT_TOKENS  # what Llama runs on at most
VAE_TILE = 256  # default spatial tile of the VAE, pixels
VAE_TEMPORAL_TILE = 17  # pixel frames of one temporal tile (5 latent frames)


def component_sizes(modules: Mapping[str, nn.Module]) -> dict[str, int | ComponentSize]:
    """Device bytes of every component (named as in ``PHASES``), with the blocks of the
    streamable ones (the transformer, the Llama encoder up to the layer it is read at) listed."""
    llama = modules["text_encoder"]
    streamable = {
        "transformer": modules["transformer"].streaming_sizes(),
        "text_encoder": llama.streaming_sizes(llama.layers_needed(HIDDEN_STATE_INDEX)),
    }
    return {n: streamable[n] if n in streamable else ModuleTensors(m).nbytes for n, m in modules.items()}


# Kept out of every budget on a CUDA device: the context (0.3-0.5 GiB, allocated by the
# driver, not by PyTorch), cuBLAS/cuDNN workspaces and the caching allocator's fragmentation.
DEVICE_RESERVE_BYTES = 768 << 20
# Peak activations of the VAE, in units of one [frames, H, W, 128 channels] tensor of its
# dtype (17 frames decoding, 1 encoding; a tile's H x W when tiled), measured with
# benchmarks/dry_run.py on the real VAE at the 640 bucket and rounded up (every estimate here is
# checked against the real-size models' measured peaks by tests/test_activation_estimates.py).
VAE_DECODE_PEAK_TENSORS = 7.5
VAE_TILED_DECODE_PEAK_TENSORS = 8.0  # the tile's own activations plus the frame it is blended into
VAE_ENCODE_PEAK_TENSORS = 10.0


def activation_estimates(
    modules: Mapping[str, nn.Module], resolution: int, window: int
) -> tuple[dict[str, int], dict[str, int]]:
    """(peak activation bytes per phase with an untiled VAE, the VAE phases' peaks when tiled).

    Sampling counts a block's temporaries in the compute dtype, the float32 streams of a
    float16 model at 4 bytes, and the residual a step cache keeps between calls (one guidance
    branch: real CFG's second one is not counted).
    """
    transformer = modules["transformer"]
    t = transformer.config
    compute_element, stream_element = transformer.dtype.itemsize, transformer.residual_dtype.itemsize
    # The largest bucket area at this resolution (416 x 960 at 640), scaled like the buckets.
    largest = max(BUCKETS_640, key=lambda hw: hw[0] * hw[1])
    pixels = int(largest[0] * largest[1] * (resolution / BASE_RESOLUTION) ** 2)
    bucket_h, bucket_w = find_bucket(*largest, resolution)
    image_tokens = sum(packed_tokens(bucket_h // 8, bucket_w // 8, window))
    # SigLIP's image tokens and the padded text rows join the image stream in every block
    tokens = image_tokens + modules["image_encoder"].config.num_patches + TEXT_EMBED_LENGTH
    # streams, q/k/v, MLP hidden (4x), attention output: 16 token-wide tensors, of which about
    # 3 are the streams (the joint buffer and a block's update; measured by benchmarks/dry_run.py)
    per_token = 16 * compute_element + 3 * (stream_element - compute_element)
    sampling = tokens * t.inner_dim * per_token
    sampling += image_tokens * t.inner_dim * stream_element
    llama = modules["text_encoder"].config
    text = TEXT_TOKENS * llama.intermediate_size * transformer.dtype.itemsize * 6
    vae = modules["vae"]
    width = vae.config.block_out_channels[0] * vae.dtype.itemsize
    tile = min(pixels, VAE_TILE * VAE_TILE)
    untiled = {
        "text": text,
        "image": int(pixels * width * VAE_ENCODE_PEAK_TENSORS),
        "sampling": sampling,
        "decode": int(VAE_TEMPORAL_TILE * pixels * width * VAE_DECODE_PEAK_TENSORS),
    }
    tiled = {
        "image": int(tile * width * VAE_ENCODE_PEAK_TENSORS),
        "decode": int(VAE_TEMPORAL_TILE * tile * width * VAE_TILED_DECODE_PEAK_TENSORS),
    }
    return untiled, tiled


def plan_memory(
    modules: Mapping[str, nn.Module],
    vram_budget_gb: float | None,
    *,
    resolution: int,
    window: int,
    device: torch.device,
) -> MemoryPlan:
    """The memory plan for the named components on ``device``; a CUDA device keeps ``DEVICE_RESERVE_BYTES`` free."""
    activations, tiled = activation_estimates(modules, resolution, window)
    return plan_pipeline_memory(
        vram_budget_gb,
        component_sizes(modules),
        activations,
        tiled_vae_activation_bytes=tiled,
        reserve_bytes=DEVICE_RESERVE_BYTES if device.type == "cuda" else 0,
    )
