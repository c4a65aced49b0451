"""The CUDA dry run: the tiny pipeline on tensors that claim device ``cuda``, on this CPU.

Values are not computed there (the other tests compare values on the CPU); what is checked
is what only a device run has: no op mixes host and device tensors, the device bytes each
phase holds stay within what the memory plan budgeted, and the sampling loop does not wait
for the device.
"""

from __future__ import annotations

import gc
import itertools

import numpy as np
import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.dry_run import CudaDryRun, DeviceMixError
from framepack.memory.planner import DEVICE_RESERVE_BYTES
from framepack.memory.residency import ModuleTensors
from framepack.memory.streamer import minimum_budget
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.loop import generate_latents
from framepack.sampling.sections import plan_sections
from tests.transformer_support import TINY, conditioning_and_context, make_inputs

CONFIG = GenerationConfig(seconds=0.5, steps=3, resolution=64, window=3, seed=1)


def test_a_host_scalar_in_a_device_op_is_refused() -> None:
    """What a CUDA kernel such as addcmul refuses (a CPU 0-dim tensor as ``self``) fails here too."""
    with CudaDryRun():
        x = torch.ones(4, device="cuda")
        with pytest.raises(DeviceMixError, match="addcmul"):
            torch.addcmul(torch.tensor(1e-6), x, x)
        assert torch.addcmul(torch.full((), 1e-6, device="cuda"), x, x).device.type == "cuda"


def test_copies_and_reads_are_counted() -> None:
    with CudaDryRun() as dry:
        x = torch.zeros(1000, dtype=torch.float16).to("cuda")
        assert dry.counters.host_to_device_bytes == 2000 and dry.device_bytes() == 2000
        bool(x.sum() > 0)
        host = x.cpu()
        assert dry.syncs() == 2 and dry.counters.device_to_host_bytes == 2000
        assert host.device.type == "cpu" and torch.equal(host, torch.zeros(1000, dtype=torch.float16))
        del x
        assert dry.device_bytes() == 0


def test_a_storage_freed_between_two_allocations_is_not_in_the_second_ones_peak() -> None:
    """Every free before an allocation counts in its peak: a view keeps its storage, a view of a
    storage does not count it twice, and a storage freed by the collector (a reference cycle)
    leaves as soon as it is collected. The dry run learns of a free from a weak reference to the
    storage's Python object, which torch keeps alive as long as the storage: the view case fails
    if it ever stops doing so."""
    with CudaDryRun() as dry:
        with dry.phase("p"):
            kept = torch.empty(100, dtype=torch.uint8, device="cuda")  # 100 bytes
            freed = torch.empty(250, dtype=torch.float32, device="cuda")  # 1000 bytes
            view = freed[10:]
            del freed
            assert dry.device_bytes() == 1100  # the view holds all 1000 bytes
            del view
            second = torch.empty(750, dtype=torch.float16, device="cuda")  # 1500 bytes beside 100
            cycle: list[object] = [torch.empty(500, dtype=torch.uint8, device="cuda")]  # 500 bytes
            cycle.append(cycle)
            del cycle
            gc.collect()
            third = torch.empty(900, dtype=torch.uint8, device="cuda")  # 900 bytes beside 1600
        assert dry.device_bytes() == 100 + 1500 + 900
        # 2100 with the cycle's 500, 2500 on the third allocation, not 3000 (or 3500 with the view's)
        assert dry.counters.peak_device_bytes == 2500 and dry.counters.phase_peaks == {"p": 2500}
        assert dry.counters.phase_own_peaks == {"p": 2500}
        del kept, second, third
        assert dry.device_bytes() == 0


def _tiny_on_claimed_cuda(dtype: torch.dtype, budget_gb: float | None) -> FramePackPipeline:
    """The tiny pipeline in ``dtype`` placed on ``cuda`` (call inside a ``CudaDryRun``)."""
    pipe = FramePackPipeline.tiny(seed=0)
    for module in pipe.components.modules().values():
        module.to(dtype)
    pipe.device = torch.device("cuda")
    if budget_gb is None:  # everything resident, as a card with room for it
        for module in pipe.components.modules().values():
            tensors = ModuleTensors(module)
            tensors.assign([t.to("cuda") for t in tensors.tensors])
    else:
        pipe.set_vram_budget(budget_gb, resolution=CONFIG.resolution, window=CONFIG.window)
    return pipe


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("budget_mib", [None, 805, 4096])
def test_tiny_generation_on_claimed_cuda(dtype: torch.dtype, budget_mib: int | None) -> None:
    budget_gb = None if budget_mib is None else budget_mib / 1024
    with CudaDryRun(total_gib=8, bf16=dtype == torch.bfloat16) as dry:
        pipe = _tiny_on_claimed_cuda(dtype, budget_gb)
        plan = pipe._placement.plan if pipe._placement is not None else None
        image = np.full((64, 64, 3), 100, np.uint8)
        with dry.pipeline_phases(pipe):
            video = pipe.generate(image, "a dancer", CONFIG)
        assert video.num_frames > 0
        if plan is None:
            return
        room = plan.budget_bytes - plan.reserve_bytes
        for phase, planned in plan.phase_device_bytes.items():
            measured = dry.counters.phase_peaks[phase]
            assert measured <= room, f"{phase}: measured {measured} bytes, more than the {room} the budget leaves"
            assert dry.counters.phase_own_peaks[phase] <= planned, phase  # what the phase adds is what it planned
            if not plan.swap_components:  # alone on the device: the phase's estimate is what it holds
                assert measured <= planned <= 1.15 * measured + DEVICE_RESERVE_BYTES, (phase, measured, planned)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sampling_steps_do_not_wait_for_the_device(dtype: torch.dtype) -> None:
    """No host read in a step's hot path: one per section, the verdict of its latents' finiteness
    checks; float16's overflow guard also reads once per transformer call."""
    config = GenerationConfig(seconds=1.2, steps=3, resolution=64, window=3, seed=1)  # three sections
    with CudaDryRun(total_gib=8, bf16=dtype == torch.bfloat16) as dry:
        pipe = _tiny_on_claimed_cuda(dtype, None)
        image = np.full((64, 64, 3), 100, np.uint8)
        inputs = pipe.encode(image, "a dancer", config)
        before = dry.syncs()
        generate_latents(
            pipe.components.transformer,
            inputs.conditioning,
            inputs.start_latent,
            config,
            generator=torch.Generator().manual_seed(0),
        )
        sections = plan_sections(config.seconds, fps=config.fps, window=config.window, mode=config.mode).num_sections
        calls = config.steps * sections  # one transformer call per step (no real CFG)
        allowed = sections + (calls if dtype == torch.float16 else 0)
        assert sections == 3 and dry.syncs() - before == allowed, dry.counters.sync_reasons[before:]


def test_cuda_budget_defaults_to_and_is_capped_at_the_free_memory(caplog: pytest.LogCaptureFixture) -> None:
    with CudaDryRun(total_gib=3) as dry:
        pipe = FramePackPipeline.tiny(seed=0)
        pipe.device = torch.device("cuda")
        assert pipe.set_vram_budget(None, resolution=64, window=3).budget_bytes == 3 << 30
        with caplog.at_level("WARNING", logger="framepack"):
            plan = pipe.set_vram_budget(100, resolution=64, window=3)
        assert plan.budget_bytes == 3 << 30 and "more than the 3.00 GiB free" in caplog.text
        assert pipe.set_vram_budget(2, resolution=64, window=3).budget_bytes == 2 << 30
        assert dry.counters.empty_cache_calls >= 2  # each re-plan frees what the old placement cached


def test_components_that_fit_together_stay_between_sections() -> None:
    """Swapping per phase, but the transformer and the VAE fit beside each other: after the
    first section nothing of the transformer is uploaded again."""
    config = GenerationConfig(seconds=1.2, steps=2, resolution=64, window=3, seed=1)  # three sections
    with CudaDryRun(total_gib=8) as dry:
        pipe = FramePackPipeline.tiny(seed=0)
        pipe.device = torch.device("cuda")
        plan = pipe.set_vram_budget(808 / 1024, resolution=64, window=3)
        assert plan.swap_components and dry.counters.host_to_device_bytes == 0  # nothing goes up before its phase
        transformer_bytes = ModuleTensors(pipe.components.transformer).nbytes
        uploaded = []
        for _ in pipe.stream(np.full((64, 64, 3), 100, np.uint8), "a dancer", config):
            uploaded.append(dry.counters.host_to_device_bytes)
        per_section = [b - a for a, b in itertools.pairwise(uploaded)]
        assert len(per_section) == 2 and all(0 < n < transformer_bytes / 4 for n in per_section), per_section


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_streamed_transformer_step_on_claimed_cuda(dtype: torch.dtype) -> None:
    """Layer streaming at its smallest budget: exact-size page-locked blocks, and the device
    holds the non-block weights, the streamer's blocks and the step's activations only."""
    transformer = FramePackTransformer(TransformerConfig(**TINY)).to(dtype).requires_grad_(False)
    inputs = make_inputs(1, [5])
    conditioning, context = conditioning_and_context(inputs)
    with CudaDryRun(total_gib=8) as dry:
        sizes = transformer.streaming_sizes()
        streamer = transformer.enable_streaming("cuda", minimum_budget(sizes.block_bytes), pin_memory=True, load=False)
        assert streamer.plan.streamed
        assert dry.device_bytes() == 0 and dry.counters.host_to_device_bytes == 0  # set up, nothing uploaded yet
        transformer.load()
        # each streamed block exactly (not rounded to a power of two), then the non-block weights, packed
        *blocks, rest = dry.counters.pinned_allocations
        assert blocks == [sizes.block_bytes[i] for i in streamer.plan.streamed]
        assert sizes.fixed_bytes <= rest < sizes.fixed_bytes + 256 * len(ModuleTensors(transformer).tensors)
        held = dry.device_bytes()
        assert held == sizes.fixed_bytes + streamer.plan.device_bytes
        latents = inputs["latents"].to("cuda")
        out = transformer(latents, inputs["timestep"].to("cuda"), conditioning.to("cuda", dtype), context)
        assert out.device.type == "cuda" and out.shape == latents.shape
        assert dry.counters.host_to_device_bytes >= streamer.plan.streamed_bytes  # every streamed block copied in
        transformer.disable_streaming()


def test_a_pipeline_of_fake_weights_generates_and_its_digest_covers_the_layout() -> None:
    """The real-size dry run (benchmarks/dry_run.py) gives every model fake host weights:
    shapes, no values. A generation must still run, fingerprint included, and the weights'
    digest then covers names, dtypes and shapes only."""
    with CudaDryRun(total_gib=8, bf16=True) as dry:
        pipe = FramePackPipeline.tiny(seed=0)
        real_digest = pipe.components.weights_digest()
        for model in pipe.components.modules().values():
            dry.fake_weights(model)
        fake_digest = pipe.components.weights_digest()
        pipe.device = torch.device("cuda")
        pipe.set_vram_budget(4.0, resolution=CONFIG.resolution, window=CONFIG.window)
        with dry.pipeline_phases(pipe):
            video = pipe.generate(np.full((64, 64, 3), 100, np.uint8), "a dancer", CONFIG)
    assert video.num_frames > 0
    assert fake_digest != real_digest  # the values no longer count, so the digest moved
