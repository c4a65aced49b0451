"""Rates timed on the device at hand, at the shapes of the run being planned: ``--measure``.

A few seconds of micro-benchmarks, each timed after a warm-up as the median of repeats over
about a second (on a shared machine, the rate a long run meets): one matmul of a
block's q/k/v projection, one attention over a call's tokens (capped so that the CPU
finishes in about a second), one VAE convolution, an element-wise pass, a tiny op (the per-kernel overhead), a
page-locked host->device copy, and a read of a fresh file (its pages dropped from the cache
first where the OS allows).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..device_runtime import runtime
from .profiles import DeviceProfile

REPEATS = 3
PROBE_SECONDS = 1.0
DISK_PROBE_BYTES = 64 << 20
COPY_PROBE_BYTES = 256 << 20
MAX_CPU_TOKENS = 4096  # attention and matmul rows on a CPU: the rate, in a second
MAX_CPU_FRAME = 256  # pixels per side of the convolution probe on a CPU
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
    width: int,
    heads: int,
    tokens: int,
    conv_channels: int = 128,
    frame_size: tuple[int, int] = (544, 704),
    disk_folder: str | Path | None = None,
) -> DeviceProfile:
    """``base`` with its rates replaced by ones timed on ``device`` at a call's shapes:
    ``tokens`` rows of ``width`` features, ``heads`` attention heads, and a 3x3x3 convolution
    of ``conv_channels`` (the VAE's first width) over 5 frames of ``frame_size`` pixels: the
    decoder's last block, where most of its FLOPs are."""
    device = torch.device(device)
    if device.type == "cpu":
        tokens = min(tokens, MAX_CPU_TOKENS)
    head_dim = width // heads
    x = torch.randn(tokens, width, device=device, dtype=dtype)
    w = torch.randn(width, 3 * width, device=device, dtype=dtype)
    matmul = 2 * tokens * width * 3 * width / _typical_seconds(lambda: x @ w, device)
    q = torch.randn(1, heads, tokens, head_dim, device=device, dtype=dtype)
    attention_s = _typical_seconds(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), device)
    attention = 4 * heads * tokens * tokens * head_dim / attention_s
    frame = tuple(min(n, MAX_CPU_FRAME) if device.type == "cpu" else n for n in frame_size)
    video = torch.randn(1, conv_channels, 5, *frame, device=device, dtype=dtype)  # the VAE's last block
    kernel = torch.randn(conv_channels, conv_channels, 3, 3, 3, device=device, dtype=dtype)
    conv_s = _typical_seconds(lambda: torch.nn.functional.conv3d(video, kernel, padding=1), device)
    conv = 2 * video.numel() * conv_channels * 27 / conv_s
    big = torch.empty(BANDWIDTH_PROBE_BYTES // dtype.itemsize, device=device, dtype=dtype).fill_(1.0)
    bandwidth = 2 * big.numel() * big.element_size() / _typical_seconds(lambda: big.mul_(1.0), device)
    small = torch.ones(8, device=device, dtype=dtype)
    overhead = _typical_seconds(lambda: [small.add_(0) for _ in range(100)], device) / 100
    rates: dict[str, float] = dict(
        matmul_flops=matmul,
        attention_flops=attention,
        conv_flops=conv,
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
    return base.with_measured(**rates)


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
