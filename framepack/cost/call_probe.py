"""Time one real transformer call's parts on the device, at the run's token counts: ``--measure``.

Micro-benchmarks of one matmul and one attention miss most of what a real call costs beside
its big kernels (norms, modulation, RoPE, small matmuls, the Python around them and, on a
busy CPU, the threads' wait for each other at every op). So the probe builds the real
thing: a transformer of the planned config (random weights, on the device, in the run's
dtype) with one double-stream and one single-stream block, and times

* one double-stream and one single-stream block, called as the stack calls them;
* a whole call whose cache policy skips the stack (embedders, token refiner, output head);
* one UniPC step with a model that costs nothing (the sampler's own work on the latents),

each at the run's shape and at a smaller one (half the latent height and width), so that
``timing.fit`` can give each part a fixed cost and a FLOP rate: ``plan --compare`` reaches
other resolutions from them, and the run's own shape is predicted as timed.

Where the real block would not fit (more than ``max_block_flops`` per call, a CPU's second
or so, or more than ``max_bytes`` of weights) a proxy is timed: fewer heads of the same size,
then a smaller latent grid; its fixed costs and rates stand for the real ones (``proxy``
says so).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from ..cache.base import BlockStack
from ..conditioning import Conditioning, PackedContext
from ..models.layers import Scratch
from ..models.packing import CONTEXT_FRAMES
from ..models.transformer import FramePackTransformer, TransformerConfig
from ..sampling.unipc import sample_unipc
from .flops import CallShape, block_flops, call_flops
from .timing import CallTiming, fit

REPEATS = 3  # timed calls per part and size at least, after one warm-up
PROBE_SECONDS = 0.5  # and at least this long: the load of a shared machine averages in
SAMPLER_PROBE_STEPS = 4
MAX_CPU_BLOCK_FLOPS = 60e9  # one block call on a CPU: well under a second on a few cores
MAX_DEVICE_PROBE_BYTES = 4 << 30  # the probe model's weights on a GPU: beside what the run holds


def probe_call(
    config: TransformerConfig,
    shape: CallShape,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    max_block_flops: float | None = None,
    max_bytes: int | None = None,
) -> CallTiming:
    """The parts of one call of ``config`` at ``shape``, timed on ``device`` in ``dtype``."""
    device = torch.device(device)
    if max_block_flops is None and device.type == "cpu":
        max_block_flops = MAX_CPU_BLOCK_FLOPS
    if max_bytes is None and device.type != "cpu":
        max_bytes = MAX_DEVICE_PROBE_BYTES
    probed, large, proxy = probe_config(config, shape, max_block_flops, max_bytes, dtype.itemsize)
    small = _smaller(large)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _probe_model(probed).to(device, dtype).eval().requires_grad_(False)
    points = {part: [] for part in ("double", "single", "around")}
    for s in (small, large):
        around_flops, _ = call_flops(probed, s)
        double, single = _first_of_each(block_flops(probed, s), probed)
        seconds = _time_parts(model, s, device)
        points["around"].append((around_flops.total, seconds["around"]))
        if double is not None:
            points["double"].append((double.total, seconds["double"]))
        if single is not None:
            points["single"].append((single.total, seconds["single"]))
    fitted = {part: fit(*p) if len(p) == 2 else fit((0, 0.0), (1, 0.0)) for part, p in points.items()}
    return CallTiming(
        double=fitted["double"],
        single=fitted["single"],
        around=fitted["around"],
        sampler_step_s=sampler_step_seconds(shape, probed, device),
        proxy=proxy,
    )


def probe_config(
    config: TransformerConfig,
    shape: CallShape,
    max_block_flops: float | None,
    max_bytes: int | None,
    itemsize: int,
) -> tuple[TransformerConfig, CallShape, str | None]:
    """(the config and shape to time, how they differ from the planned ones, if they do): heads
    halved while a double block exceeds the limits, then the latent grid halved."""
    probed, s = config, shape

    def too_big(c: TransformerConfig, s: CallShape) -> bool:
        flops = max(f.total for f in block_flops(c, s))
        weights = _probe_parameters(c) * itemsize
        return (max_block_flops is not None and flops > max_block_flops) or (
            max_bytes is not None and weights > max_bytes
        )

    while too_big(probed, s) and probed.num_attention_heads > 1:
        probed = dataclasses.replace(probed, num_attention_heads=max(probed.num_attention_heads // 2, 1))
    while too_big(probed, s) and max(s.height, s.width) > 2:
        s = _smaller(s)
    if (probed, s) == (config, shape):
        return probed, s, None
    note = f"a proxy: {probed.num_attention_heads} of {config.num_attention_heads} heads"
    if s != shape:
        note += f", latents {s.height}x{s.width} for {shape.height}x{shape.width}"
    return probed, s, note


def _smaller(shape: CallShape) -> CallShape:
    """Half the latent height and width (even, at least 2): about a quarter of the image tokens."""
    return dataclasses.replace(shape, height=max(shape.height // 4 * 2, 2), width=max(shape.width // 4 * 2, 2))


def _probe_parameters(config: TransformerConfig) -> int:
    """Parameters of the probe model (one block of each kind): from its meta twin."""
    with torch.device("meta"):
        return sum(p.numel() for p in _probe_model(config).parameters())


def _probe_model(config: TransformerConfig) -> FramePackTransformer:
    return FramePackTransformer(
        dataclasses.replace(
            config, num_layers=min(config.num_layers, 1), num_single_layers=min(config.num_single_layers, 1)
        )
    )


def _first_of_each(flops: list, config: TransformerConfig) -> tuple:
    double = flops[0] if config.num_layers else None
    single = flops[config.num_layers] if config.num_single_layers else None
    return double, single


class _SkipStack:
    """A cache policy that skips the block stack: the call's time is everything around it."""

    def run(self, stack: BlockStack) -> torch.Tensor:
        return stack.stack_input


def _inputs(config: TransformerConfig, shape: CallShape, device: torch.device) -> tuple:
    """A call's inputs at ``shape``: random latents, conditioning and a full packed context."""
    h, w = shape.height, shape.width
    generator = torch.Generator("cpu").manual_seed(0)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device)

    def indices(n: int) -> torch.Tensor:
        return torch.arange(n, device=device)[None]

    c = config.in_channels
    context = PackedContext(
        latent_indices=indices(shape.frames),
        **{name: randn(1, c, frames, h, w) if shape.with_context else None for name, frames in CONTEXT_FRAMES.items()},
        **{
            f"{name}_indices": indices(frames) if shape.with_context else None
            for name, frames in CONTEXT_FRAMES.items()
        },
    )
    conditioning = Conditioning(
        text_embeds=randn(1, shape.text_tokens, config.text_embed_dim),
        text_mask=torch.ones(1, shape.text_tokens, dtype=torch.bool),
        pooled=randn(1, config.pooled_projection_dim),
        guidance=torch.tensor([10.0]),
        image_embeds=randn(1, shape.image_tokens, config.image_proj_dim) if shape.image_tokens else None,
    )
    latents = randn(1, c, shape.frames, h, w)
    return conditioning, context, latents


def _time_parts(model: FramePackTransformer, shape: CallShape, device: torch.device) -> dict[str, float]:
    """Median seconds of a double block, a single block and a call without its stack, at ``shape``."""
    conditioning, context, latents = _inputs(model.config, shape, device)
    prepared = model.prepare(conditioning, context, tuple(latents.shape))
    timestep = torch.tensor([500.0], device=device)
    seconds = {"around": _mean(lambda: model.denoise(latents, timestep, prepared, cache=_SkipStack()), device)}
    n_img = prepared.rope.shape[1]
    n_ctx = shape.context_stream()
    dim = model.config.inner_dim
    stream = model.residual_dtype
    start = torch.randn(1, n_img + n_ctx, dim, generator=torch.Generator("cpu").manual_seed(1)).to(device, stream)
    joint = start.clone()
    temb_act = torch.nn.functional.silu(torch.randn(1, dim, device=device, dtype=model.dtype))
    scratch = Scratch()
    for kind, blocks in (("double", model.double_blocks), ("single", model.single_blocks)):
        if len(blocks):
            block = blocks[0]
            seconds[kind] = _mean(
                lambda block=block: block(joint, n_img, temb_act, prepared.rope, prepared.joint_mask, scratch),
                device,
                reset=lambda: joint.copy_(start),  # a block updates the stream in place
            )
    return seconds


def sampler_step_seconds(shape: CallShape, config: TransformerConfig, device: torch.device) -> float:
    """One UniPC step's own work on the run's latents: ``sample_unipc`` with a model that returns its input."""
    latents = torch.randn(1, config.in_channels, shape.frames, shape.height, shape.width).to(device)
    sigmas = torch.linspace(1.0, 0.0, SAMPLER_PROBE_STEPS + 1).tolist()
    total = _mean(lambda: sample_unipc(lambda x, sigma: x, latents, sigmas), device)
    return total / SAMPLER_PROBE_STEPS


@torch.no_grad()
def _mean(run: Callable[[], object], device: torch.device, reset: Callable[[], object] | None = None) -> float:
    """The mean of timed runs after a warm-up, at least ``REPEATS`` of them and ``PROBE_SECONDS``
    in all; ``reset`` runs before each, untimed. The mean, not the median: a run's time is
    the sum of its calls, slow ones (a busy machine's preemptions) included."""
    times: list[float] = []
    warm = False
    while len(times) < REPEATS or sum(times) < PROBE_SECONDS:
        if reset is not None:
            reset()
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        if warm:
            times.append(time.perf_counter() - started)
        warm = True
    return statistics.fmean(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        from ..device_runtime import runtime

        runtime().synchronize(device)
