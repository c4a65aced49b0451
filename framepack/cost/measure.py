"""Rates timed on the device at hand, at the shapes of the run being planned: ``--measure``.

Three probes run the real thing, as their parts are too many to time one by one. First
the VAE's, by one of the run's config (random weights), at the bucket's latent size (on a
CPU at most ``MAX_CPU_LATENT`` a side): an encode of one start image, whose FLOPs per second
stand for the run's encode; then a decode of one temporal tile as the run decodes them
(``PROBE_LATENT_FRAMES``: fewer frames run the CPU's conv3d at a third of its rate) and of a
one-frame tile, which give each tile of a run's decode a fixed cost and a FLOP rate (its ops
work per latent position), and one tile of each shorter size the run decodes, whose time over
that line's is its factor (the conv kernels' speed depends on the shape). Then the transformer
call's parts at the run's token counts (``call_probe.py``: one double and one single block, the
rest of the call, a UniPC step; these set the sampling time). On a CPU the encode and the
decode also give their peak RSS growth per pixel: the host memory of those phases. Then
micro-benchmarks, each timed after a warm-up as the median of repeats over about a second, for
the work no probe runs (encoders, prepare): one matmul of a block's q/k/v projection, one
attention over a call's tokens (capped so that the CPU finishes in about a second), an
element-wise pass, a tiny op (the per-kernel overhead), a page-locked host->device copy, a
read of a fresh file (its pages dropped from the cache first where the OS allows), and the
pipeline's mp4 writer encoding frames of the bucket's size.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..device_runtime import runtime
from ..models.transformer import TransformerConfig
from ..models.vae import HunyuanVideoVAE, VAEConfig
from ..video.mp4 import write_mp4
from .call_probe import probe_call
from .flops import CallShape
from .profiles import DeviceProfile
from .timing import PartTiming, fit
from .vae_flops import decode_tile_flops, vae_encode_flops

REPEATS = 3
PROBE_SECONDS = 1.0
DISK_PROBE_BYTES = 64 << 20
COPY_PROBE_BYTES = 256 << 20
MAX_CPU_TOKENS = 4096  # attention and matmul rows on a CPU: the rate, in a second
MAX_CPU_LATENT = 32  # latent pixels per side of the encode and decode probes on a CPU (a 256 px frame)
# The VAE probes' most FLOPs on a CPU (~3 s here): the tiny VAE's whole tile up to MAX_CPU_LATENT.
# A larger VAE is probed on a smaller tile (the real HunyuanVideo VAE: ~40 MFLOP per output pixel),
# at a lower rate than its real shapes get, and with bytes that only estimate the run's: a tile's
# peak RSS growth is not proportional to its pixels (the allocator maps large buffers apart: tiles
# of 12, 16 and 24 latent pixels a side grew the peak by 98, 148 and 323 MiB here).
MAX_CPU_PROBE_FLOPS = 110e9
PROBE_LATENT_FRAMES = 5  # a full temporal tile (VAETiling: 16 pixel frames, plus the one it restarts from)
VIDEO_PROBE_FRAMES = 16
BANDWIDTH_PROBE_BYTES = 64 << 20  # larger than the caches: the VAE's and a step's element-wise passes are


def _typical_seconds(run: Callable[[], object], device: torch.device) -> float:
    """The median of repeated runs for ``PROBE_SECONDS`` (at least ``REPEATS``): on a machine
    others share, the load a whole generation meets is in the rate, not only its quiet moments."""
    run()
    _sync(device)
    times: list[float] = []
    while len(times) < REPEATS or sum(times) < PROBE_SECONDS:
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return max(statistics.median(times), 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        runtime().synchronize(device)


def measure_profile(
    base: DeviceProfile,
    device: torch.device | str,
    *,
    dtype: torch.dtype,
    transformer: TransformerConfig,
    shape: CallShape,
    vae: VAEConfig,
    frame_size: tuple[int, int] = (544, 704),
    decode_tiles: Sequence[int] = (),
    disk_folder: str | Path | None = None,
) -> DeviceProfile:
    """``base`` with its rates replaced by ones timed on ``device`` at a call's shapes: the
    blocks and the rest of a call of ``transformer`` at ``shape`` (``call_probe.py``), a
    decode by a VAE of config ``vae`` (its temporal tiles of ``decode_tiles`` latent frames,
    ``estimate.decode_tile_sizes``) and an mp4 of frames of ``frame_size`` pixels (the bucket)."""
    device = torch.device(device)
    # The VAE's first: on a CPU the process's peak RSS grows by what the allocator cannot serve
    # from memory freed before, so the memory probes must meet what a run's phases meet, not the
    # micro-probes' leftovers. The encode's leftovers are a run's; the call probe's (a model built
    # and freed, blocks timed at two sizes) are not: after it, a tiny run's decode at 192 px grew
    # the peak by 409 MiB, without it by 280, and in the run itself by 300.
    with torch.random.fork_rng(devices=[]):
        model = HunyuanVideoVAE(vae).to(device, dtype).eval()
    encode_rate, encode_bytes = vae_encode_probe(model, device, dtype, frame_size)
    decode = vae_decode_probe(model, device, dtype, frame_size, decode_tiles)
    del model
    call_timing = probe_call(transformer, shape, device, dtype)
    width, heads = transformer.inner_dim, transformer.num_attention_heads
    tokens = shape.image_stream(transformer) + shape.context_stream()
    if device.type == "cpu":
        tokens = min(tokens, MAX_CPU_TOKENS)
    head_dim = width // heads
    x = torch.randn(tokens, width, device=device, dtype=dtype)
    w = torch.randn(width, 3 * width, device=device, dtype=dtype)
    matmul = 2 * tokens * width * 3 * width / _typical_seconds(lambda: x @ w, device)
    q = torch.randn(1, heads, tokens, head_dim, device=device, dtype=dtype)
    attention_s = _typical_seconds(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), device)
    attention = 4 * heads * tokens * tokens * head_dim / attention_s
    big = torch.empty(BANDWIDTH_PROBE_BYTES // dtype.itemsize, device=device, dtype=dtype).fill_(1.0)
    bandwidth = 2 * big.numel() * big.element_size() / _typical_seconds(lambda: big.mul_(1.0), device)
    small = torch.ones(8, device=device, dtype=dtype)
    overhead = _typical_seconds(lambda: [small.add_(0) for _ in range(100)], device) / 100
    rates: dict[str, object] = dict(
        matmul_flops=matmul,
        attention_flops=attention,
        conv_flops=decode.timing.flops_per_s,
        decode_tile_fixed_s=decode.timing.fixed_s,
        decode_tile_factors=decode.tile_factors,
        decode_tile_latent=decode.latent_size,
        vae_encode_flops=encode_rate,
        decode_bytes_per_pixel=decode.bytes_per_pixel,
        encode_bytes_per_pixel=encode_bytes,
        video_encode_pixels=video_encode_rate(frame_size),
        memory_bandwidth=bandwidth,
        kernel_overhead_s=overhead,
        disk_read=disk_read_rate(disk_folder),
    )
    if device.type != "cpu":
        host = torch.empty(COPY_PROBE_BYTES, dtype=torch.uint8).pin_memory()
        target = torch.empty(COPY_PROBE_BYTES, dtype=torch.uint8, device=device)
        rates["host_to_device"] = COPY_PROBE_BYTES / _typical_seconds(
            lambda: target.copy_(host, non_blocking=True), device
        )
    return base.with_measured(**rates, call_timing=call_timing)


def _once_warm(run: Callable[[], object], device: torch.device) -> float:
    """Seconds of one run after one warm-up run (the first builds the kernels' plans)."""
    run()
    _sync(device)
    started = time.perf_counter()
    run()
    _sync(device)
    return max(time.perf_counter() - started, 1e-9)


def _rss_kib(field: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` of this process (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """VmHWM := VmRSS (Linux); False where the OS does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_growth(run: Callable[[], object], device: torch.device) -> tuple[float, int | None]:
    """(seconds, bytes the process's peak RSS grew by) of one ``run``; the bytes only on a CPU
    under an OS that tells a process's peak (Linux), else None."""
    before = _rss_kib("VmRSS")
    measure_bytes = device.type == "cpu" and before is not None and _reset_peak_rss()
    with torch.no_grad():
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        seconds = max(time.perf_counter() - started, 1e-9)
    peak = _rss_kib("VmHWM") if measure_bytes else None
    return seconds, None if peak is None or before is None else max(peak - before, 0) * 1024


def vae_encode_probe(
    model: HunyuanVideoVAE, device: torch.device, dtype: torch.dtype, frame_size: tuple[int, int]
) -> tuple[float, float | None]:
    """(FLOPs per second, host bytes per input pixel) of a real encode of one image (the start
    image's) by ``model``, cold as a run's one encode is: its time, and its peak RSS growth (on a
    CPU, where the OS tells a process's peak; None elsewhere). On a CPU at most
    ``MAX_CPU_LATENT`` latent pixels a side."""
    s = model.config.spatial_compression_ratio
    h, w = (max(n // s, 1) * s for n in frame_size)
    if device.type == "cpu":
        h, w = (min(n // s, MAX_CPU_LATENT) * s for n in (h, w))
        while vae_encode_flops(model.config, h, w).total > MAX_CPU_PROBE_FLOPS and max(h, w) > 2 * s:
            h, w = max(h // 2 // s * s, s), max(w // 2 // s * s, s)
    pixels = torch.rand(1, model.config.in_channels, 1, h, w, generator=torch.Generator().manual_seed(0))
    seconds, grown = _peak_growth(lambda: model.encode(pixels.to(device, dtype)), device)
    return vae_encode_flops(model.config, h, w).total / seconds, None if grown is None else grown / (h * w)


@dataclass(frozen=True)
class DecodeProbe:
    """What ``vae_decode_probe`` timed: see there."""

    timing: PartTiming
    bytes_per_pixel: float | None
    tile_factors: tuple[tuple[int, float], ...]
    latent_size: tuple[int, int]  # (height, width) of the tiles decoded


def vae_decode_probe(
    model: HunyuanVideoVAE,
    device: torch.device,
    dtype: torch.dtype,
    frame_size: tuple[int, int],
    tile_frames: Sequence[int] = (),
) -> DecodeProbe:
    """A temporal tile's fixed seconds and FLOP rate, the host bytes per output pixel, and the
    factors of other tile sizes, from real decodes by ``model`` (a random-weight VAE of the run's
    config): a full tile, cold as each section's decode is (it comes after its sampling has taken
    the caches and the memory over), then a one-frame tile (a decode's last is often that short,
    and costs more than its FLOPs say); the line through both is the timing. Then one tile of
    each size in ``tile_frames`` (latent frames: the tile sizes the run decodes) between those
    two, each timed once, after them (as a decode's tiles after its first are), whose seconds
    over the line's are its factor; a size the probe's tile is too short for gets none (on a
    CPU the tile may be capped). The bytes (on a CPU, where the OS tells a process's peak) are
    the full tile's peak RSS growth per pixel it outputs."""
    vae = model.config
    s = vae.spatial_compression_ratio
    h, w = (n // s for n in frame_size)
    frames = PROBE_LATENT_FRAMES
    if device.type == "cpu":
        h, w = min(h, MAX_CPU_LATENT), min(w, MAX_CPU_LATENT)
        while decode_tile_flops(vae, frames, h, w).total > MAX_CPU_PROBE_FLOPS and (h > 2 or w > 2 or frames > 2):
            if h > 2 or w > 2:
                h, w = max(h // 2, 2), max(w // 2, 2)
            else:
                frames -= 1
    z = torch.randn(1, vae.latent_channels, frames, h, w, generator=torch.Generator().manual_seed(0))
    z = z.to(device, dtype)
    pixels = (1 + vae.temporal_compression_ratio * (frames - 1)) * h * w * s * s
    # one tile: decode_frames would cut 5 frames into tiles of 5 and 2
    full, grown = _peak_growth(lambda: model._decode_tile(z), device)
    short, _ = _peak_growth(lambda: model._decode_tile(z[:, :, :1]), device)
    timing = fit((decode_tile_flops(vae, 1, h, w).total, short), (decode_tile_flops(vae, frames, h, w).total, full))
    factors = []
    for n in sorted({n for n in tile_frames if 1 < n < frames}):
        seconds, _ = _peak_growth(lambda n=n: model._decode_tile(z[:, :, :n]), device)
        factors.append((n, seconds / timing.seconds(decode_tile_flops(vae, n, h, w).total)))
    return DecodeProbe(timing, None if grown is None else grown / pixels, tuple(factors), (h, w))


def video_encode_rate(frame_size: tuple[int, int]) -> float:
    """Pixels per second the pipeline's mp4 writer encodes, at the bucket's size (noise frames:
    the hardest for the encoder, so the rate errs slow)."""
    frames = np.random.default_rng(0).integers(0, 256, (VIDEO_PROBE_FRAMES, *frame_size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        seconds = _once_warm(lambda: write_mp4(Path(folder) / "probe.mp4", frames), torch.device("cpu"))
    return frames[..., 0].size / seconds


def disk_read_rate(folder: str | Path | None = None) -> float:
    """Bytes per second reading a fresh ``DISK_PROBE_BYTES`` file in ``folder`` (default: the temp folder).

    The file's pages are dropped from the cache before the read where the OS allows
    (``posix_fadvise``); elsewhere the figure is the page cache's, an upper bound.
    """
    with tempfile.NamedTemporaryFile(dir=folder) as handle:
        handle.write(os.urandom(1 << 20) * (DISK_PROBE_BYTES >> 20))
        handle.flush()
        os.fsync(handle.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        started = time.perf_counter()
        with open(handle.name, "rb", buffering=0) as reader:
            while reader.read(8 << 20):
                pass
        return DISK_PROBE_BYTES / max(time.perf_counter() - started, 1e-9)
