"""VAE decode: time against diffusers, and peak host memory of a long tiled decode.

1. Speed: the same random weights (saved by diffusers, loaded through our from_pretrained)
   and the same latents, CPU float32, decoded alternately by ours and diffusers'
   AutoencoderKLHunyuanVideo; medians after a warm-up; prints ours/diffusers (target ≤ 1.0).
2. Memory: a tiled decode (spatial and temporal tiles) of 9 and of 33 latent frames, each
   in a fresh subprocess. Torch's CPU allocations are plain mallocs that Python's
   tracemalloc cannot see, so the figure is the kernel's count: the process's peak
   resident set (VmHWM, reset just before the decode through /proc/self/clear_refs)
   minus its resident set just before (VmRSS), i.e. the extra memory the decode touched
   at its worst moment, without the model, the input and the interpreter. Ours streams ``decode_frames`` and turns
   each chunk into uint8 as a video writer would; the reference's ``decode`` must return
   the whole float video. Target: ours within 10% between 9 and 33 frames.

Run: python -m benchmarks.vae
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from framepack.models.vae import HunyuanVideoVAE, VAETiling

SPEED_CONFIG = dict(block_out_channels=[64, 64, 128, 128], layers_per_block=2, norm_num_groups=32)
SPEED_LATENTS = (1, 16, 3, 12, 12)
MEMORY_CONFIG = dict(block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=4)
MEMORY_LATENT_SIZE = (10, 10)  # 80×80 px: 2×2 spatial tiles of 64 px at stride 48
MEMORY_TILING = VAETiling(
    tile_sample_min_height=64,
    tile_sample_min_width=64,
    tile_sample_min_num_frames=16,
    tile_sample_stride_height=48,
    tile_sample_stride_width=48,
    tile_sample_stride_num_frames=12,
)
# glibc keeps freed blocks below its dynamic mmap threshold (up to 32 MiB) in the heap, so
# RSS would count allocator fragmentation, not live tensors; a fixed 256 KiB threshold
# gives tensor-sized blocks back to the kernel when freed. Same setting for both sides.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 * 1024)}
REPEATS = 5


def save_random_reference(config: dict, folder: Path) -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    reference = AutoencoderKLHunyuanVideo(**config)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * (0.05 if p.ndim > 1 else 0.5))
    reference.save_pretrained(folder)


def speed(folder: Path) -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    reference = AutoencoderKLHunyuanVideo.from_pretrained(folder).eval()
    ours = HunyuanVideoVAE.from_pretrained(folder)
    z = torch.randn(*SPEED_LATENTS, generator=torch.Generator().manual_seed(0))
    scale = reference.config.scaling_factor

    def run_ours() -> torch.Tensor:
        return ours.decode(z)

    def run_reference() -> torch.Tensor:
        with torch.no_grad():
            return reference.decode(z / scale).sample

    err = (run_ours() - run_reference()).abs().max().item()  # also the warm-up
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(REPEATS):
        for name, fn in (("ours", run_ours), ("diffusers", run_reference)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(
        f"decode {SPEED_CONFIG['block_out_channels']} latents {SPEED_LATENTS[2:]} → "
        f"{4 * SPEED_LATENTS[2] - 3}×{8 * SPEED_LATENTS[3]}×{8 * SPEED_LATENTS[4]} px, {torch.get_num_threads()} threads: "
        f"ours {ours_s:.3f}s, diffusers {ref_s:.3f}s, ratio ours/diffusers {ours_s / ref_s:.3f} "
        f"(median of {REPEATS}; max abs diff {err:.2e})"
    )


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this measurement needs Linux")


def reset_peak_rss_kib() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux ≥ 4.0) and return the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return proc_status_kib("VmRSS")


def measure_child(folder: str, side: str, frames: int) -> None:
    """Runs in a fresh process: prints the peak-RSS growth (MiB) of one tiled decode."""
    ours = HunyuanVideoVAE.from_pretrained(folder)
    z = torch.randn(1, 16, frames, *MEMORY_LATENT_SIZE, generator=torch.Generator().manual_seed(0))
    if side == "diffusers":
        from diffusers import AutoencoderKLHunyuanVideo

        reference = AutoencoderKLHunyuanVideo.from_pretrained(folder).eval()
        reference.enable_tiling(**vars(MEMORY_TILING))
        z = z / reference.config.scaling_factor
    before = reset_peak_rss_kib()
    with torch.no_grad():
        if side == "ours":
            written = 0
            for chunk in ours.decode_frames(z, tiling=MEMORY_TILING):
                frames_u8 = (chunk.clamp(-1, 1) * 127.5 + 127.5).to(torch.uint8)  # what a writer keeps
                written += frames_u8.shape[2]
        else:
            written = reference.decode(z).sample.shape[2]
    after = proc_status_kib("VmHWM")
    print(json.dumps({"peak_growth_mib": (after - before) / 1024, "frames": written}))


def memory(folder: Path) -> None:
    results: dict[tuple[str, int], float] = {}
    for side in ("ours", "diffusers"):
        for frames in (9, 33):
            output = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), side, str(frames)],
                check=True,
                env={**os.environ, **CHILD_ENV},
                capture_output=True,
                text=True,
            ).stdout
            report = json.loads(output.strip().splitlines()[-1])
            results[side, frames] = report["peak_growth_mib"]
            print(
                f"tiled decode {side:9s} {frames:2d} latent frames → {report['frames']} px frames: "
                f"peak RSS growth {report['peak_growth_mib']:.1f} MiB"
            )
    for side in ("ours", "diffusers"):
        ratio = results[side, 33] / max(results[side, 9], 1e-9)
        print(f"{side}: peak(33 frames) / peak(9 frames) = {ratio:.3f}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        measure_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        speed_folder, memory_folder = Path(tmp, "speed"), Path(tmp, "memory")
        save_random_reference(SPEED_CONFIG, speed_folder)
        save_random_reference(MEMORY_CONFIG, memory_folder)
        speed(speed_folder)
        memory(memory_folder)


if __name__ == "__main__":
    main()
