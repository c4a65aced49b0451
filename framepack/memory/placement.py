"""Where each component lives, phase by phase, under one device-memory budget.

``plan_pipeline_memory`` decides (pure arithmetic); ``Placement`` carries the decision
out: it sets up layer streaming for the transformer and the Llama encoder, and with a
tight budget loads each phase's components onto the device only for that phase.
Activation sizes are conservative estimates from the model widths and the video size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..components import Components
from ..device_runtime import runtime
from ..models.streaming import StreamableModel
from ..video.buckets import BASE_RESOLUTION, BUCKETS_640
from .planner import GIB, PHASES, ComponentSize, MemoryPlan, plan_pipeline_memory
from .residency import ComponentResidency, ModuleTensors

logger = logging.getLogger("framepack")

PROMPT_HIDDEN_STATE = -3  # FramePack reads Llama's hidden state three from the end
TEXT_TOKENS = 351  # 95 template tokens + 256 prompt tokens
CONTEXT_TOKENS = 729 + 512  # SigLIP image tokens + padded text tokens
VAE_TILE = 256  # default spatial tile of the VAE, pixels
VAE_TEMPORAL_TILE = 17  # pixel frames of one temporal tile (5 latent frames)


def component_sizes(components: Components) -> dict[str, int | ComponentSize]:
    """Device bytes of every component, with the blocks of the streamable ones listed."""
    llama = components.text_encoder
    return {
        "transformer": components.transformer.streaming_sizes(),
        "text_encoder": llama.streaming_sizes(llama.layers_needed(PROMPT_HIDDEN_STATE)),
        "text_encoder_2": ModuleTensors(components.text_encoder_2).nbytes,
        "image_encoder": ModuleTensors(components.image_encoder).nbytes,
        "vae": ModuleTensors(components.vae).nbytes,
    }


# Kept out of every budget on a CUDA device: the context (0.3-0.5 GiB, allocated by the
# driver, not by PyTorch), cuBLAS/cuDNN workspaces and the caching allocator's fragmentation.
DEVICE_RESERVE_BYTES = 768 << 20
# Peak activations of the VAE, in units of one [frames, H, W, 128 channels] tensor of its
# dtype (17 frames decoding, 1 encoding; a tile's H x W when tiled), measured with
# benchmarks/dry_run.py on the real VAE at the 640 bucket and rounded up.
VAE_DECODE_PEAK_TENSORS = 7.5
VAE_TILED_DECODE_PEAK_TENSORS = 8.0  # the tile's own activations plus the frame it is blended into
VAE_ENCODE_PEAK_TENSORS = 10.0


def activation_estimates(components: Components, resolution: int, window: int) -> tuple[dict[str, int], dict[str, int]]:
    """(peak activation bytes per phase with an untiled VAE, the VAE phases' peaks when tiled).

    Sampling counts a block's temporaries in the compute dtype, the float32 streams of a
    float16 model at 4 bytes, and the residual a step cache keeps between calls (one guidance
    branch: real CFG's second one is not counted).
    """
    transformer = components.transformer
    t = transformer.config
    compute_element, stream_element = transformer.dtype.itemsize, transformer.residual_dtype.itemsize
    # The largest bucket area at this resolution (416 x 960 at 640), scaled like the buckets.
    pixels = int(max(h * w for h, w in BUCKETS_640) * (resolution / BASE_RESOLUTION) ** 2)
    # The packed context adds 1x (2 frames), 2x and 4x groups: about 28 % of a 9-frame window.
    image_tokens = int(window * pixels / 256 * 1.3)
    tokens = image_tokens + CONTEXT_TOKENS
    # streams, q/k/v, MLP hidden (4x), attention output: 16 token-wide tensors, of which about
    # 3 are the streams (the joint buffer and a block's update; measured by benchmarks/dry_run.py)
    per_token = 16 * compute_element + 3 * (stream_element - compute_element)
    sampling = tokens * t.inner_dim * per_token
    sampling += image_tokens * t.inner_dim * stream_element
    llama = components.text_encoder.config
    text = TEXT_TOKENS * llama.intermediate_size * transformer.dtype.itemsize * 6
    vae = components.vae.config
    width = vae.block_out_channels[0] * next(components.vae.parameters()).element_size()
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
    components: Components, vram_budget_gb: float | None, *, resolution: int, window: int, device: torch.device
) -> MemoryPlan:
    """The memory plan for ``components`` on ``device``; a CUDA device keeps ``DEVICE_RESERVE_BYTES`` free."""
    activations, tiled = activation_estimates(components, resolution, window)
    return plan_pipeline_memory(
        vram_budget_gb,
        component_sizes(components),
        activations,
        tiled_vae_activation_bytes=tiled,
        reserve_bytes=DEVICE_RESERVE_BYTES if device.type == "cuda" else 0,
    )


def device_budget_gb(device: torch.device, requested: float | None) -> float | None:
    """The budget to plan with. On CUDA it is at most the device memory free now (other
    processes and the desktop hold some), and that free memory when none is asked for: a
    plan for more than the card has would run out of memory mid-video. Elsewhere the
    request as given (None: no budget)."""
    if device.type != "cuda":
        return requested
    free_gb = runtime().mem_get_info(device)[0] / GIB
    if requested is None:
        logger.info("vram budget: %.2f GiB, the memory free on %s", free_gb, device)
        return free_gb
    if requested > free_gb:
        logger.warning("vram budget %.2f GiB is more than the %.2f GiB free on %s: planning with %.2f GiB",
                       requested, free_gb, device, free_gb)
        return free_gb
    return requested


class Placement:
    """Applies a ``MemoryPlan`` to a pipeline's components on ``device``.

    With swapping, a phase's components come onto the device when it starts, and the
    components of earlier phases leave, least recently used first, only while the new phase
    would not fit beside them:
    a budget that holds the transformer's resident blocks and the VAE keeps both between
    sections instead of uploading gigabytes twice per section.
    """

    def __init__(self, components: Components, device: torch.device, plan: MemoryPlan) -> None:
        self.plan = plan
        self._components = components
        self._residency: dict[str, ComponentResidency] = {}
        self._device_bytes: dict[str, int] = {}
        sizes = component_sizes(components)
        for name, module in components.modules().items():
            size = sizes[name]
            streaming = plan.streaming.get(name)
            if isinstance(module, StreamableModel) and isinstance(size, ComponentSize) and streaming is not None:
                if streaming.streamed:
                    # Llama runs once per video: its streamed blocks are not worth page-locked memory.
                    module.enable_streaming(
                        device, streaming.device_bytes, num_blocks=len(streaming.block_bytes),
                        pin_memory=False if name == "text_encoder" else None, load=not plan.swap_components,
                    )
                    self._device_bytes[name] = size.fixed_bytes + streaming.device_bytes
                    continue
                # Exactly what the plan counted: a text encoder's unread last layers and its
                # embedding table stay on the host.
                residency = module.residency(device, len(streaming.block_bytes))
            else:
                residency = ComponentResidency(module, device)
            self._residency[name] = residency
            self._device_bytes[name] = residency.nbytes
            if not plan.swap_components:
                residency.to_device()
        self._on_device: list[str] = [] if plan.swap_components else list(components.modules())

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Components of phase ``name`` on the device for the block (kept there until room is needed)."""
        if self.plan.swap_components:
            names = [n for n in PHASES[name] if n in self._components.modules()]
            room = self.plan.budget_bytes - self.plan.reserve_bytes - self.plan.phase_device_bytes[name]
            others = [n for n in self._on_device if n not in names]  # least recently used first
            while others and sum(self._device_bytes[n] for n in others) > room:
                self._release(others.pop(0))  # the offload hands its memory back to the driver
            for n in names:
                self._bring(n)
        yield

    def release(self) -> None:
        """Every weight back on its host tensors (streaming switched off)."""
        for name, module in self._components.modules().items():
            if isinstance(module, StreamableModel):
                module.disable_streaming()
        for residency in self._residency.values():
            residency.offload()
        self._on_device = []

    def _bring(self, name: str) -> None:
        if name in self._on_device:  # already there: now the most recently used
            self._on_device.remove(name)
            self._on_device.append(name)
            return
        if name in self._residency:
            self._residency[name].to_device()
        else:
            getattr(self._components, name).to_device()
        self._on_device.append(name)

    def _release(self, name: str) -> None:
        if name in self._residency:
            self._residency[name].offload()
        else:
            getattr(self._components, name).offload()
        self._on_device.remove(name)
