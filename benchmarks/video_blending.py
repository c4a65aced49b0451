"""Streaming section blending vs the reference's whole-history soft_append (inverted mode).

Prints, for one video of N sections, the wall time of each side (median of 5 interleaved
runs after a warm-up) and the float pixels each keeps in host memory at the end.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from framepack.video import FrameAssembler

WINDOW, SECTIONS, HEIGHT, WIDTH = 9, 10, 128, 128
OVERLAP = 4 * WINDOW - 3


def soft_append_bcthw(history: torch.Tensor, current: torch.Tensor, overlap: int) -> torch.Tensor:
    weights = torch.linspace(1, 0, overlap, dtype=history.dtype).view(1, 1, -1, 1, 1)
    blended = weights * history[:, :, -overlap:] + (1 - weights) * current[:, :, :overlap]
    return torch.cat([history[:, :, :-overlap], blended, current[:, :, overlap:]], dim=2).to(history)


def sections() -> list[torch.Tensor]:
    lengths = [4 * WINDOW - 3] + [8 * WINDOW - 3] * (SECTIONS - 2) + [8 * WINDOW + 1]
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, t, HEIGHT, WIDTH, generator=generator) * 2 - 1 for t in lengths]


def reference(inputs: list[torch.Tensor]) -> tuple[int, int]:
    history = None
    for current in inputs:
        history = current if history is None else soft_append_bcthw(current, history, OVERLAP)
    frames = (history.float().clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    return len(frames), history.numel() * history.element_size()


def ours(inputs: list[torch.Tensor]) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as spool, FrameAssembler("inverted", OVERLAP, spool) as assembler:
        for current in inputs:
            assembler.add(current)
        count = sum(1 for _ in assembler.frames())
    # the blender keeps exactly `overlap` float32 frames (tests/test_video_blending.py checks it)
    return count, OVERLAP * 3 * HEIGHT * WIDTH * 4


def main() -> None:
    inputs = sections()
    reference(inputs), ours(inputs)  # warm-up
    times: dict[str, list[float]] = {"reference": [], "ours": []}
    held: dict[str, tuple[int, int]] = {}
    for _ in range(5):
        for name, run in (("reference", reference), ("ours", ours)):
            start = time.perf_counter()
            held[name] = run(inputs)
            times[name].append(time.perf_counter() - start)
    for name, (count, float_bytes) in held.items():
        print(f"{name:9s} frames={count} float pixels held at the end: {float_bytes / 2**20:.1f} MiB")
    ref, mine = (statistics.median(times[k]) for k in ("reference", "ours"))
    print(
        f"{SECTIONS} sections {HEIGHT}x{WIDTH}: reference {ref * 1e3:.0f} ms, ours {mine * 1e3:.0f} ms, "
        f"ours/reference = {mine / ref:.2f}"
    )


if __name__ == "__main__":
    main()
