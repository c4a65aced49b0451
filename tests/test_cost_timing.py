"""The measured call model: fixed cost + FLOPs at a rate per part, fitted from two timed sizes
(``cost/timing.py``), how ``call_probe`` pairs each part's time with its FLOPs, its proxy for
a block too large to time, and how ``estimate`` turns a measured call into seconds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from framepack.cli import main
from framepack.config import GenerationConfig
from framepack.cost import call_probe, measure
from framepack.cost.estimate import estimate
from framepack.cost.flops import CallShape, block_flops, call_flops
from framepack.cost.memory import ModelConfigs
from framepack.cost.profiles import PROFILES
from framepack.cost.timing import CallTiming, PartTiming, fit
from framepack.cost.vae_flops import decode_tile_flops, vae_encode_flops
from framepack.models.transformer import TransformerConfig
from framepack.models.vae import HunyuanVideoVAE

TINY = ModelConfigs.tiny()


def test_fit_is_the_line_through_both_sizes() -> None:
    part = fit((1e9, 0.3), (3e9, 0.7))  # 0.2 s per GFLOP, 0.1 s fixed
    assert part.fixed_s == pytest.approx(0.1, rel=1e-12)
    assert part.flops_per_s == pytest.approx(5e9, rel=1e-12)  # 3 GFLOP in the 0.6 s beside the fixed part
    assert part.seconds(3e9) == pytest.approx(0.7, rel=1e-12)  # the run's size: as timed
    assert part.seconds(5e9) == pytest.approx(1.1, rel=1e-12)


def test_fit_keeps_the_large_size_as_timed_when_the_points_are_noisy() -> None:
    slower_small = fit((1e9, 0.5), (3e9, 0.4))  # noise: all of it is fixed cost
    assert (slower_small.fixed_s, slower_small.flops_per_s) == (0.4, math.inf)
    negative_intercept = fit((1e9, 0.1), (3e9, 0.5))  # the line passes below 0 s at 0 FLOPs
    assert negative_intercept.fixed_s == 0.0
    assert negative_intercept.flops_per_s == pytest.approx(3e9 / 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="more FLOPs"):
        fit((3e9, 0.1), (1e9, 0.5))
    one_size = fit((2e9, 0.4), (2e9, 0.5))  # a grid too small to shrink: both points at one size
    assert (one_size.fixed_s, one_size.flops_per_s) == (0.0, 2e9 / 0.5)
    assert one_size.seconds(2e9) == pytest.approx(0.5, rel=1e-12)


def test_probe_pairs_each_part_with_its_own_flops_at_each_size(monkeypatch) -> None:
    """With part times made of known fixed costs and rates, the probe recovers exactly those:
    a part paired with another's FLOPs, or the two sizes swapped, gives other numbers."""
    fixed = {"double": 0.01, "single": 0.02, "around": 0.03}
    rate = {"double": 1e9, "single": 2e9, "around": 4e9}
    config = TINY.transformer

    def fake_parts(model, shape, device):
        around, _ = call_flops(model.config, shape)
        blocks = block_flops(model.config, shape)
        flops = {"double": blocks[0].total, "single": blocks[model.config.num_layers].total, "around": around.total}
        return {part: fixed[part] + flops[part] / rate[part] for part in flops}

    monkeypatch.setattr(call_probe, "_time_parts", fake_parts)
    shape = CallShape(9, 16, 16, 7, 729)
    timing = call_probe.probe_call(config, shape, "cpu", torch.float32)
    assert timing.proxy is None
    for part in fixed:
        got = getattr(timing, part)
        assert got.fixed_s == pytest.approx(fixed[part], rel=1e-9, abs=1e-12), part
        assert got.flops_per_s == pytest.approx(rate[part], rel=1e-9), part
    assert timing.sampler_step_s > 0  # timed for real: UniPC on the run's latents


def test_a_block_too_large_to_time_is_probed_through_fewer_heads() -> None:
    real = TransformerConfig.preset("framepack")
    shape = CallShape(9, 80, 88, 64, 729)  # the 640x704 bucket: ~12k tokens
    probed, probed_shape, note = call_probe.probe_config(real, shape, 60e9, None, 4)
    double = block_flops(probed, probed_shape)[0].total
    assert double <= 60e9
    assert probed.attention_head_dim == real.attention_head_dim and probed.inner_dim < real.inner_dim
    assert note is not None and f"of {real.num_attention_heads} heads" in note
    # as many heads as fit: twice as many (or the full latents) would pass the limit
    if probed_shape == shape:
        twice = dataclasses.replace(probed, num_attention_heads=2 * probed.num_attention_heads)
        assert block_flops(twice, shape)[0].total > 60e9
    else:
        assert probed.num_attention_heads == 1
    # a block that fits is timed as planned
    tiny_shape = CallShape(9, 16, 16, 7, 729)
    assert call_probe.probe_config(TINY.transformer, tiny_shape, 60e9, None, 4) == (TINY.transformer, tiny_shape, None)
    # a weight limit alone also gives a proxy
    assert call_probe.probe_config(real, tiny_shape, None, 1 << 30, 2)[2] is not None


def _measured(timing: CallTiming):
    return dataclasses.replace(PROFILES["cpu"], call_timing=timing, source="measured")


TIMING = CallTiming(
    double=PartTiming(0.5, 1e9),
    single=PartTiming(0.25, 2e9),
    around=PartTiming(0.125, 4e9),
    sampler_step_s=0.0625,
)


def _estimate(profile, **changes: object):
    config = GenerationConfig(**{"seconds": 1.0, "steps": 4, "resolution": 128, **changes})
    return estimate(config, profile, models=TINY, image_size=(128, 128), text_tokens=7, from_disk=False)


def test_a_measured_call_is_its_blocks_around_and_the_sampler_step() -> None:
    e = _estimate(_measured(TIMING))
    t = TINY.transformer
    around, _ = call_flops(t, e.shape)
    blocks = block_flops(t, e.shape)
    double = t.num_layers * (0.5 + blocks[0].total / 1e9)
    single = t.num_single_layers * (0.25 + blocks[-1].total / 2e9)
    call = double + single + 0.125 + around.total / 4e9
    assert e.seconds.step == pytest.approx(call, rel=1e-12)
    assert e.seconds.sampling == pytest.approx(4 * (call + 0.0625), rel=1e-12)  # 1 section x 4 steps
    cfg = _estimate(_measured(TIMING), real_cfg=3.0)
    assert cfg.seconds.sampling == pytest.approx(4 * (2 * call + 0.0625), rel=1e-12)  # one sampler step, two calls


def test_a_skipped_step_costs_the_call_without_its_stack() -> None:
    plain = _estimate(_measured(TIMING), steps=25)
    cached = _estimate(_measured(TIMING), steps=25, cache="magcache")  # computes 12 of 25
    t = TINY.transformer
    blocks = block_flops(t, plain.shape)
    stack = t.num_layers * (0.5 + blocks[0].total / 1e9) + t.num_single_layers * (0.25 + blocks[-1].total / 2e9)
    assert cached.seconds.sampling == pytest.approx(plain.seconds.sampling - 13 * stack, rel=1e-9)


def test_plan_measure_times_the_call_on_this_machine(capsys, monkeypatch) -> None:
    tile_frames = []
    probe = measure.vae_decode_probe

    def recording_probe(*args, **kwargs):
        tile_frames.append(kwargs["tile_frames"] if "tile_frames" in kwargs else args[4])
        return probe(*args, **kwargs)

    monkeypatch.setattr(measure, "vae_decode_probe", recording_probe)
    argv = ["plan", "--tiny", "--measure", "--size", "128x128", "--seconds", "1", "--steps", "4", "--text-tokens", "7"]
    assert main([*argv, "--compare", "window=9,3"]) == 0  # a row each: the measured rates' estimates
    out = capsys.readouterr().out
    assert "measured rates" in out and "| window |" in out and "\n| 9 | " in out and "\n| 3 | " in out
    # 1 s at 30 fps, inverted: at window 9 one section decodes 10 latent frames, in tiles (4 + 1
    # frames, every 3) of 5, 5, 4, 1; at window 3 two sections decode 3 frames (one tile) and
    # 3 + 3 + the start latent (5, 4, 1). The probe times each size once: both rows' sizes.
    assert [list(frames) for frames in tile_frames] == [[1, 3, 4, 5]]


def test_a_proxy_probe_is_said_in_the_estimate() -> None:
    proxy = dataclasses.replace(TIMING, proxy="a proxy: 3 of 24 heads")
    assert any("3 of 24 heads" in note for note in _estimate(_measured(proxy)).notes)
    assert not any("proxy" in note for note in _estimate(_measured(TIMING)).notes)


@pytest.mark.parametrize("probe", ["encode", "decode"])
def test_the_vae_probes_time_real_calls_at_the_buckets_latent_size(monkeypatch, probe: str) -> None:
    """The encode probe: one cold encode, its FLOPs over its seconds. The decode probe: a cold
    full tile, then a one-frame tile, a fixed cost per tile and a rate through both."""
    seconds = iter([2.0, 0.5, 1.9])  # the first call's, the second's, the third's

    def fake_peak_growth(run, device):  # the call's seconds and peak RSS growth, fixed
        run()
        return next(seconds), 6_000_000

    monkeypatch.setattr(measure, "_peak_growth", fake_peak_growth)
    vae = HunyuanVideoVAE(TINY.vae).eval()
    s, r = TINY.vae.spatial_compression_ratio, TINY.vae.temporal_compression_ratio
    frame = (16 * s, 12 * s)  # a 16 x 12 latent
    if probe == "encode":
        rate, per_pixel = measure.vae_encode_probe(vae, torch.device("cpu"), torch.float32, frame)
        assert rate == vae_encode_flops(TINY.vae, *frame).total / 2.0
        assert per_pixel == 6_000_000 / (frame[0] * frame[1])
        assert next(seconds) == 0.5  # one call
    else:
        # the run decodes tiles of 5, 4 and 1 latent frames: the 4-frame one is timed too
        # (and 7, which is longer than the probe's tile: no factor)
        probe = measure.vae_decode_probe(vae, torch.device("cpu"), torch.float32, frame, tile_frames=[5, 4, 5, 1, 7])
        frames = measure.PROBE_LATENT_FRAMES
        full, one = decode_tile_flops(TINY.vae, frames, 16, 12).total, decode_tile_flops(TINY.vae, 1, 16, 12).total
        seconds_per_flop = (2.0 - 0.5) / (full - one)
        fixed = 0.5 - one * seconds_per_flop
        assert probe.timing.fixed_s == pytest.approx(fixed)
        assert probe.timing.flops_per_s == pytest.approx(1 / seconds_per_flop)
        assert probe.bytes_per_pixel == 6_000_000 / ((1 + r * (frames - 1)) * frame[0] * frame[1])  # the full tile's
        four = decode_tile_flops(TINY.vae, 4, 16, 12).total
        ((size, factor),) = probe.tile_factors
        assert size == 4 and factor == pytest.approx(1.9 / (fixed + four * seconds_per_flop))
        assert probe.latent_size == (16, 12)


@pytest.mark.parametrize(
    ("vae", "frame", "decoded"),
    [
        (TINY.vae, (192, 192), (5, 24, 24)),  # the run's tile whole (its RSS growth is the run's)
        (TINY.vae, (256, 256), (5, 32, 32)),
        (TINY.vae, (512, 384), (5, 32, 32)),  # at most MAX_CPU_LATENT a side on a CPU
        (ModelConfigs.real().vae, (640, 640), (5, 2, 2)),  # the real VAE: halved until it fits the cap
    ],
)
def test_the_cpu_decode_probe_decodes_the_runs_tile_while_it_fits_the_flop_cap(
    monkeypatch, vae, frame, decoded
) -> None:
    """Peak RSS growth is not proportional to a tile's pixels, so the probe extrapolates only
    when the run's tile would exceed ``MAX_CPU_PROBE_FLOPS`` (the real VAE's: 304 GFLOP at 4 x 4)."""
    shapes = []

    class Recorder:  # the probe reads a model's config and calls its tile decode
        config = vae

        def _decode_tile(self, z: torch.Tensor) -> None:
            shapes.append(tuple(z.shape[2:]))

    monkeypatch.setattr(measure, "_peak_growth", lambda run, device: (run(), (1.0, 1.0))[1])
    measure.vae_decode_probe(Recorder(), torch.device("cpu"), torch.float32, frame)
    assert shapes[0] == decoded
    assert shapes[1] == (1, *decoded[1:])  # then its one-frame tile
    assert decode_tile_flops(vae, *decoded).total <= measure.MAX_CPU_PROBE_FLOPS


def test_a_decode_pays_its_fixed_cost_once_per_temporal_tile() -> None:
    """1 s at 30 fps, window 9: one section decoding 10 latent frames, in tiles of 5, 5, 4 and 1."""
    config = GenerationConfig(seconds=1.0, steps=4, resolution=128)
    table = dataclasses.replace(PROFILES["cpu"], kernel_overhead_s=0.0)

    def decode_seconds(profile):
        return estimate(
            config, profile, models=TINY, image_size=(128, 128), text_tokens=7, from_disk=False
        ).seconds.decode

    assert decode_seconds(dataclasses.replace(table, decode_tile_fixed_s=0.1)) - decode_seconds(table) == (
        pytest.approx(4 * 0.1)
    )
    # A measured factor of 3 for 4-frame tiles: the one 4-frame tile costs 3 times its fixed cost and FLOPs.
    four = decode_tile_flops(TINY.vae, 4, 16, 16)  # 128 px: a 16 x 16 latent
    tile_s = 0.1 + four.total / table.conv_flops
    fixed = dataclasses.replace(table, decode_tile_fixed_s=0.1)
    factored = dataclasses.replace(fixed, decode_tile_factors=((4, 3.0),), decode_tile_latent=(16, 16))
    assert decode_seconds(factored) - decode_seconds(fixed) == pytest.approx(2 * tile_s)
    # Timed at another latent size (another row of a comparison): the factor does not hold here.
    assert decode_seconds(dataclasses.replace(factored, decode_tile_latent=(24, 24))) == decode_seconds(fixed)


def test_a_measured_encode_rate_times_the_start_images_vae_encode() -> None:
    config = GenerationConfig(seconds=1.0, steps=4, resolution=128)

    def encoders_seconds(profile, with_image=True):
        e = estimate(config, profile, models=TINY, image_size=(128, 128), text_tokens=7, from_disk=False,
                     with_image=with_image)  # fmt: skip
        return e.seconds.encoders, e.bucket

    table = dataclasses.replace(PROFILES["cpu"], kernel_overhead_s=0.0)
    measured = dataclasses.replace(table, vae_encode_flops=1e9)
    (before, bucket), (after, _) = encoders_seconds(table), encoders_seconds(measured)
    vae_flops = vae_encode_flops(TINY.vae, *bucket).total
    assert after - before == pytest.approx(vae_flops / 1e9 - vae_flops / table.conv_flops)
    assert encoders_seconds(measured, False)[0] == encoders_seconds(table, False)[0]  # no image: no VAE encode
