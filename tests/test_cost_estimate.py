"""The cost model's arithmetic: cache shares, decoded frames, how FLOPs and bytes become seconds,
the memory plan of meta-device models, and the ``plan`` command's output."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from framepack.cli import main
from framepack.components import tiny_components
from framepack.config import GenerationConfig
from framepack.cost.caching import computed_share
from framepack.cost.compare import parse_axes
from framepack.cost.estimate import decoded_latent_frames, encoded_pixel_frames, estimate
from framepack.cost.memory import ModelConfigs
from framepack.cost.profiles import PROFILES, device_profile
from framepack.errors import ConfigError
from framepack.memory.planner import plan_memory
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.sampling.sections import plan_sections

# Rates that make the arithmetic easy to check: one FLOP per second is 1e12 per second for each kind.
UNIT = dataclasses.replace(
    PROFILES["cpu"],
    matmul_flops=1e12,
    attention_flops=2e12,
    conv_flops=4e12,
    memory_bandwidth=float("inf"),
    kernel_overhead_s=0.0,
)
TINY = ModelConfigs.tiny()


def test_cache_shares() -> None:
    # README: MagCache's official table computes 12 of 25 steps
    assert computed_share("magcache", 25)[0] == 12 / 25
    assert computed_share("none", 25)[0] == 1.0
    assert computed_share(None, 10)[0] == 1.0
    # TeaCache upstream: 0.1 about 1.6x faster, 0.15 about 2.1x; 0 computes every step
    assert computed_share("teacache:0.1", 25)[0] == pytest.approx(1 / 1.6)
    assert computed_share("teacache", 25)[0] == pytest.approx(1 / 2.1)
    assert computed_share("teacache:0", 25)[0] == 1.0
    assert computed_share("teacache:0.05", 25)[0] == pytest.approx((1 + 1 / 1.6) / 2)
    assert computed_share("teacache:5", 4)[0] == 0.5  # never below the two forced calls
    assert computed_share("fbcache", 25)[0] == 1.0


def test_decoded_latent_frames_follow_the_pipeline() -> None:
    # inverted: the first section decodes its window, later ones theirs plus the neighbour's, the last + start
    assert decoded_latent_frames(plan_sections(3 * 36 / 30, window=9, mode="inverted")) == [9, 18, 19]
    assert decoded_latent_frames(plan_sections(36 / 30, window=9, mode="inverted")) == [10]
    # forward: the first decodes the start latent and its window, later ones the last two windows
    assert decoded_latent_frames(plan_sections(3 * 36 / 30, window=9, mode="forward")) == [10, 18, 18]


def test_video_encoding_counts_the_mp4_and_on_a_host_the_previews() -> None:
    """1 s at 30 fps is one section (no preview before the mp4); the mp4 is 37 frames at 128x128."""
    e = _tiny_estimate()
    assert e.plan.pixel_frames == 37
    assert e.seconds.video == pytest.approx(37 * 128 * 128 / UNIT.video_encode_pixels, rel=1e-12)
    # 4 sections: previews of 1/4, 2/4 and 3/4 of the video before the mp4 (on a host only)
    four = plan_sections(4 * 36 / 30, window=9, mode="inverted")
    assert four.num_sections == 4
    assert encoded_pixel_frames(four, host=True) == pytest.approx(four.pixel_frames * 2.5)
    assert encoded_pixel_frames(four, host=False) == four.pixel_frames


def test_a_measured_cpu_decode_sets_the_decode_phase_memory() -> None:
    """One 1 s section decodes 10 latent frames in tiles of 5, 5, 4 and 1: the largest tile
    outputs 17 pixel frames; the section's float32 RGB output is 37 frames."""
    per_pixel = 1000.0
    measured = dataclasses.replace(UNIT, decode_bytes_per_pixel=per_pixel)
    config = GenerationConfig(seconds=1.0, steps=4, resolution=128)
    e = estimate(config, measured, models=TINY, image_size=(128, 128), text_tokens=7, from_disk=False)
    expected = int(per_pixel * 17 * 128 * 128 + 3 * 4 * 37 * 128 * 128)
    assert e.memory.activation_bytes["decode"] == expected
    assert _tiny_estimate().memory.activation_bytes["decode"] < expected  # the planner's own estimate


def test_host_ram_holds_every_phase_and_a_measured_encode_sets_the_image_phase() -> None:
    """On a host the phases' working sets add up (the allocator keeps what each freed); a
    measured encode of the start image sets the image phase at its bytes per input pixel."""
    plain = _tiny_estimate()
    phases = plain.memory.activation_bytes
    assert set(phases) == {"text", "image", "sampling", "decode"}
    assert plain.memory.host_activation_bytes == sum(phases.values()) > plain.memory.peak_activation_bytes
    measured = dataclasses.replace(UNIT, encode_bytes_per_pixel=4000.0)
    config = GenerationConfig(seconds=1.0, steps=4, resolution=128)
    e = estimate(config, measured, models=TINY, image_size=(128, 128), text_tokens=7, from_disk=False)
    assert e.memory.activation_bytes["image"] == 4000 * 128 * 128 > phases["image"]
    assert e.memory.host_activation_bytes == plain.memory.host_activation_bytes - phases["image"] + 4000 * 128 * 128
    no_image = estimate(
        config, measured, models=TINY, image_size=(128, 128), text_tokens=7, from_disk=False, with_image=False
    )
    assert no_image.memory.activation_bytes["image"] == phases["image"]  # nothing encoded: the planner's figure


def test_meta_fp8_weights_are_the_ones_quantize_fp8_leaves() -> None:
    """Same names, shapes and dtypes as a real tiny transformer quantized with 32-column blocks."""
    real = FramePackTransformer(TINY.transformer).eval()
    real.quantize_fp8(block=32)
    meta = TINY.meta_modules(torch.float32, torch.float32, fp8=True)["transformer"]

    def tensors(m):
        return {n: (tuple(t.shape), t.dtype) for n, t in [*m.named_parameters(), *m.named_buffers()]}

    def scales(m):
        return {
            n: (tuple(x.weight_scale.shape), x.weight_scale.dtype)
            for n, x in m.named_modules()
            if getattr(x, "weight_scale", None) is not None
        }

    assert math.gcd(64, TINY.transformer.inner_dim) == 32  # the block the estimate uses for this width
    assert tensors(meta) == tensors(real)
    assert scales(meta) == scales(real) != {}


def test_estimating_the_real_models_builds_nothing_slow() -> None:
    """The real models' plan runs no meta-tensor kernel: the first one imports torch._dynamo,
    seconds before any output (the cause of a 20-45 s ``plan``)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from framepack.config import GenerationConfig\n"
        "from framepack.cost.estimate import estimate\n"
        "from framepack.cost.profiles import device_profile\n"
        "e = estimate(GenerationConfig(), device_profile('rtx4060ti-8gb'), vram_budget_gb=6, fp8=True)\n"
        "assert e.video_flops > 0\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"


def _tiny_estimate(**changes: object):
    config = GenerationConfig(**{"seconds": 1.0, "steps": 4, "resolution": 128, **changes})
    return estimate(config, UNIT, models=TINY, image_size=(128, 128), text_tokens=7, from_disk=False)


def test_step_seconds_are_flops_over_rates_and_cfg_doubles_them() -> None:
    e = _tiny_estimate()
    f = e.step_flops
    assert e.seconds.step == pytest.approx(f.matmul / 1e12 + f.attention / 2e12, rel=1e-12)
    assert e.seconds.sampling == pytest.approx(4 * e.seconds.step, rel=1e-12)  # 1 section x 4 steps
    assert e.seconds.decode == pytest.approx(e.decode.total / 4e12, rel=1e-12)
    cfg = _tiny_estimate(real_cfg=3.0)
    assert cfg.calls_per_step == 2
    assert cfg.seconds.step == pytest.approx(2 * e.seconds.step, rel=1e-12)
    assert cfg.encoders.total == 2 * e.encoders.total - _image_side(e)  # the negative prompt is encoded too


def _image_side(e) -> int:
    """Encoder FLOPs that do not double with a negative prompt: SigLIP and the VAE encode."""
    from framepack.cost.vae_flops import image_encoder_flops, vae_encode_flops

    return image_encoder_flops(TINY.image_encoder).total + vae_encode_flops(TINY.vae, *e.bucket).total


def test_a_cache_skips_only_the_block_stack() -> None:
    plain = _tiny_estimate(steps=25)
    cached = _tiny_estimate(steps=25, cache="magcache")
    assert cached.computed_share == 12 / 25
    stack = plain.stack_flops.matmul / 1e12 + plain.stack_flops.attention / 2e12
    assert cached.seconds.sampling == pytest.approx(plain.seconds.sampling - 13 * stack, rel=1e-9)
    assert cached.video_flops == plain.video_flops - 13 * plain.stack_flops.total


def _medium() -> ModelConfigs:
    """The tiny encoders and VAE with the medium transformer: at 0.92 GiB on a GPU its six blocks
    stream (176 MB of weights beside 62 MiB of activations), the other phases fit."""
    t = TINY.transformer
    return ModelConfigs.tiny(
        TransformerConfig.preset(
            "medium",
            text_embed_dim=t.text_embed_dim,
            pooled_projection_dim=t.pooled_projection_dim,
            image_proj_dim=t.image_proj_dim,
        )
    )


def test_streaming_step_is_the_slower_of_compute_and_copy() -> None:
    slow_link = dataclasses.replace(UNIT, host_to_device=1e6, memory_bytes=None, name="slow link")
    config = GenerationConfig(seconds=1.0, steps=2, resolution=128)
    e = estimate(
        config,
        slow_link,
        models=_medium(),
        image_size=(128, 128),
        text_tokens=7,
        vram_budget_gb=0.92,
        dtype=torch.float32,
        from_disk=False,
    )
    streaming = e.memory.plan.streaming["transformer"]
    assert streaming.streamed == (0, 1, 2, 3, 4, 5)
    assert e.memory.streamed_bytes_per_call == streaming.streamed_bytes > 0
    assert e.copy_seconds_per_call == streaming.streamed_bytes / 1e6
    around = e.compute_seconds_per_call - (e.stack_flops.matmul / 1e12 + e.stack_flops.attention / 2e12)
    assert e.seconds.step == pytest.approx(e.copy_seconds_per_call + around, rel=1e-9)
    fast_link = estimate(
        config,
        dataclasses.replace(slow_link, host_to_device=1e15),
        models=_medium(),
        image_size=(128, 128),
        text_tokens=7,
        vram_budget_gb=0.92,
        dtype=torch.float32,
        from_disk=False,
    )
    assert fast_link.seconds.step == pytest.approx(fast_link.compute_seconds_per_call, rel=1e-9)


def test_meta_models_plan_the_bytes_the_loaded_models_plan() -> None:
    models = _medium()
    components = tiny_components(seed=0)
    components.transformer = FramePackTransformer(models.transformer).eval()
    loaded = plan_memory(components.modules(), 0.92, resolution=128, window=9, device=torch.device("cuda"))
    assert loaded.streaming["transformer"].streamed  # the case worth checking: blocks stream
    e = estimate(
        GenerationConfig(seconds=1.0, steps=2, resolution=128),
        device_profile("rtx3060"),
        models=models,
        dtype=torch.float32,
        vram_budget_gb=0.92,
        from_disk=False,
    )
    assert e.memory.plan == loaded
    assert e.memory.weight_bytes["transformer"] == sum(p.nbytes for p in components.transformer.parameters())
    # host RAM counts every tensor, Llama's embedding table (left on the host, outside the plan's sizes) too
    held = sum(t.nbytes for m in components.modules().values() for t in (*m.parameters(), *m.buffers()))
    assert e.memory.host_bytes == held
    embedding = components.text_encoder.embed_tokens.weight.nbytes
    assert e.memory.host_bytes - sum(e.memory.weight_bytes.values()) >= embedding


def test_settings_that_cannot_be_estimated_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        device_profile("gtx480")
    with pytest.raises(ConfigError, match="computes on the host"):
        estimate(GenerationConfig(), UNIT, models=TINY, vram_budget_gb=6)
    with pytest.raises(ConfigError, match="text_tokens"):
        estimate(GenerationConfig(), UNIT, models=TINY, text_tokens=0)
    with pytest.raises(ConfigError, match="unknown setting"):
        parse_axes(["colour=red"])
    with pytest.raises(ConfigError, match="int"):
        parse_axes(["steps=25,many"])
    assert parse_axes(["resolution=640,480", "cache=none,teacache"]) == {
        "resolution": [640, 480],
        "cache": ["none", "teacache"],
    }


def test_plan_command_prints_flops_memory_and_time(capsys) -> None:
    assert main(["plan", "--tiny", "--device-profile", "cpu", "--text-tokens", "7", "--size", "128x128"]) == 0
    out = capsys.readouterr().out
    e = _tiny_estimate(steps=25, resolution=128)
    assert f"{e.noisy_tokens} noisy" in out and "+ 7 text" in out
    for line in ("FLOPs:", "per step:", "memory:", "no budget: components stay resident", "predicted total:"):
        assert line in out


def test_plan_compare_prints_one_row_per_combination(capsys) -> None:
    argv = [
        "plan",
        "--tiny",
        "--device-profile",
        "cpu",
        "--size",
        "128x128",
        "--compare",
        "resolution=128,192",
        "steps=8,4",
    ]
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1")]
    assert [row.split(" | ")[:2] for row in rows] == [["| 128", "8"], ["| 128", "4"], ["| 192", "8"], ["| 192", "4"]]
    assert main([*argv[:-2], "steps=8,x"]) == 2
    assert "error: --compare" in capsys.readouterr().err
