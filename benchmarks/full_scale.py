"""The real 12.9B FramePack transformer, random weights, one denoising step, memory-mapped and streamed.

    python -m benchmarks.full_scale [--formats bf16,fp8] [--dir D] [--reuse] [--keep]
                                    [--height 64 --width 96] [--device cpu|cuda --vram-budget GB]

Not part of CI: it writes ~26 GB (bf16) + ~16 GB (fp8) to ``--dir`` (the default is under
the temporary folder) and deletes them at the end unless ``--keep``; ``--reuse`` reads
checkpoints a previous ``--keep`` run left there. Measured on a 2-core CPU shared with
other jobs (load average 3.6-4.1), one format per run: bf16 write 3.5 min, load 3 s, step
7.6 min, 23.2 GiB streamed per step, peak RssAnon 2.05 GiB / RssFile 1.49 GiB / VmHWM
3.12 GiB; fp8 write 6.5 min, load 1.3 s, step 8.9 min, 15.0 GiB per step (0.648 of bf16:
the modulation Linears stay bf16), peak RssAnon 1.78 GiB / RssFile 1.28 GiB / VmHWM 2.63 GiB.
The step alone is ~26 TFLOP, ~5 min at 93 GFLOP/s.

Each format runs in its own process, so peak memory is that format's alone:
``from_pretrained(..., dtype=bfloat16, storage="mmap")`` keeps every tensor of the file
mapped (the fused q|k|v, q|k|v|proj_mlp and modulation weights and scales too: the writer puts
their parts back to back, so each is one view of the file, not a concatenation in anonymous memory);
on a CPU, ``compute_in(model, float32)`` casts everything but the Linear weights, which
stay as stored (bf16, or fp8 with block scales) and are upcast per layer at use; the blocks
stream through two slots (``enable_streaming``), and the streamer drops each block's file
pages once copied (framepack.memory.mapped_pages). The step is one ``denoise`` call for
the first section of an inverted schedule at ``--height`` x ``--width`` pixels: a 9-latent
window, the 1x/2x/4x clean context, 729 image tokens (SigLIP's 27x27) and 20 text tokens.

Memory is read from /proc/self/status by a thread every 20 ms (peaks of RssAnon, RssFile
and their sum, and VmHWM); bytes per step are the streamer's copied block bytes and the
process's /proc/self/io read_bytes (what came from the disk, not the page cache).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from framepack.conditioning import Conditioning, PackedContext
from framepack.memory.streamer import block_nbytes, minimum_budget
from framepack.models.stored_linears import compute_in
from framepack.models.transformer import FramePackTransformer, TransformerConfig

from .full_scale_checkpoint import write_checkpoints

GIB = 2**30
WINDOW = 9  # latent frames of one section
IMAGE_TOKENS = 729
TEXT_TOKENS = 20


def proc_status() -> dict[str, int]:
    """RssAnon, RssFile, VmHWM... from /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def disk_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


class PeakSampler:
    """Peaks of anonymous, file-backed and total RSS, sampled on a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.peaks = {"anon": 0, "file": 0, "total": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(interval)

    def sample(self) -> None:
        s = proc_status()
        anon, file = s.get("RssAnon", 0), s.get("RssFile", 0) + s.get("RssShmem", 0)
        for key, value in (("anon", anon), ("file", file), ("total", anon + file)):
            self.peaks[key] = max(self.peaks[key], value)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return dict(self.peaks)


def step_inputs(config: TransformerConfig, height: int, width: int, device: torch.device) -> tuple:
    """Latents, conditioning and packed context of the first section of an inverted schedule."""
    g = torch.Generator().manual_seed(0)
    h, w = height // 8, width // 8
    latents = torch.randn(1, config.in_channels, WINDOW, h, w, generator=g)
    text = torch.randn(1, TEXT_TOKENS, config.text_embed_dim, generator=g)
    mask = torch.ones(1, TEXT_TOKENS, dtype=torch.bool)
    pooled = torch.randn(1, config.pooled_projection_dim, generator=g)
    image = torch.randn(1, IMAGE_TOKENS, config.image_proj_dim, generator=g)
    # [start | blank padding | window | post | 2x | 4x] as the reference demo lays out the first section
    pad = 3 * WINDOW  # the first inverted section of a 4-section video pads 3 windows
    indices = torch.arange(0, 1 + pad + WINDOW + 1 + 2 + 16)[None]
    pre, _, latent, post, two, four = indices.split([1, pad, WINDOW, 1, 2, 16], dim=1)
    clean = torch.cat(
        [torch.randn(1, config.in_channels, 1, h, w, generator=g), torch.zeros(1, config.in_channels, 1, h, w)], 2
    )
    clean_2x = torch.zeros(1, config.in_channels, 2, h, w)
    clean_4x = torch.zeros(1, config.in_channels, 16, h, w)
    cond = Conditioning(text, mask, pooled, torch.tensor([10.0]), image)
    context = PackedContext(latent, clean, torch.cat([pre, post], 1), clean_2x, two, clean_4x, four)
    return latents.to(device), torch.tensor([1000.0], device=device), cond, context


def measure(fmt: str, folder: Path, args: argparse.Namespace) -> dict:
    """Load one checkpoint, stream one step; everything this process measured."""
    device = torch.device(args.device)
    sampler = PeakSampler()
    read_start = disk_read_bytes()
    start = time.perf_counter()
    model = FramePackTransformer.from_pretrained(folder, dtype=torch.bfloat16, storage="mmap")
    cast_bytes = compute_in(model, torch.float32) if device.type == "cpu" else 0
    load_s = time.perf_counter() - start
    load_read = disk_read_bytes() - read_start
    sizes = [block_nbytes(b) for b in model.streamable_blocks()]
    fixed = model.streaming_sizes().fixed_bytes
    if device.type == "cpu":
        budget = minimum_budget(sizes)
        streamer = model.enable_streaming("cpu", budget)
    else:
        budget = int(args.vram_budget * GIB) - fixed if args.vram_budget else minimum_budget(sizes)
        streamer = model.enable_streaming(device, budget, staging=args.staging)
        torch.cuda.reset_peak_memory_stats(device)
    after_load = proc_status()

    latents, timestep, cond, context = step_inputs(model.config, args.height, args.width, device)
    start = time.perf_counter()
    prepared = model.prepare(cond, context, latents.shape)
    prepare_s = time.perf_counter() - start
    steps = []
    for _ in range(args.steps):
        read_before, faults_before = disk_read_bytes(), resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        out = model.denoise(latents, timestep, prepared)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF)
        steps.append(
            {
                "seconds": seconds,
                "streamed_bytes": streamer.stats.last_pass_transferred_bytes,
                "disk_read_bytes": disk_read_bytes() - read_before,
                "major_faults": faults.ru_majflt - faults_before.ru_majflt,
                "minor_faults": faults.ru_minflt - faults_before.ru_minflt,
            }
        )
    peaks = sampler.stop()
    torch.save(out.float().cpu(), args.dir / f"{fmt}-output.pt")  # the parent compares the formats
    n_img = prepared.rope.shape[1]
    return {
        "format": fmt,
        "device": str(device),
        "checkpoint_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors")),
        "load_s": load_s,
        "load_disk_read_bytes": load_read,
        "cast_bytes": cast_bytes,
        "fixed_bytes": fixed,
        "block_bytes": sum(sizes),
        "stream_budget_bytes": budget,
        "plan": str(streamer.plan),
        "anon_after_load_bytes": after_load.get("RssAnon", 0),
        "prepare_s": prepare_s,
        "steps": steps,
        "released_bytes": streamer.stats.released_bytes,
        "peak_anon_bytes": peaks["anon"],
        "peak_file_bytes": peaks["file"],
        "peak_total_bytes": peaks["total"],
        "vm_hwm_bytes": proc_status().get("VmHWM", 0),
        "peak_vram_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "tokens": {
            "image_stream": n_img,
            "noisy": prepared.noisy_tokens,
            "image_embeds": IMAGE_TOKENS,
            "text": TEXT_TOKENS,
            "total": n_img + IMAGE_TOKENS + TEXT_TOKENS,
        },
        "output_finite": bool(torch.isfinite(out).all()),
        "output_std": float(out.float().std()),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }


def relative_error(path: Path, reference_path: Path) -> str:
    """max |a - b| / max |b| and the RMS ratio of two saved outputs."""
    a, b = torch.load(path), torch.load(reference_path)
    return f"max {(a - b).abs().max() / b.abs().max():.2e}, rms {(a - b).norm() / b.norm():.2e} (relative)"


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def print_table(results: list[dict], write_s: float | None, total_s: float) -> None:
    rows = [
        ("checkpoint GiB", lambda r: gib(r["checkpoint_bytes"])),
        ("load s", lambda r: f"{r['load_s']:.1f}"),
        ("prepare s", lambda r: f"{r['prepare_s']:.1f}"),
        ("step s", lambda r: f"{r['steps'][-1]['seconds']:.1f}"),
        ("streamed GiB / step", lambda r: gib(r["steps"][-1]["streamed_bytes"])),
        ("disk read GiB / step", lambda r: gib(r["steps"][-1]["disk_read_bytes"])),
        ("released GiB (all steps)", lambda r: gib(r["released_bytes"])),
        ("float32 casts GiB", lambda r: gib(r["cast_bytes"])),
        ("RssAnon after load GiB", lambda r: gib(r["anon_after_load_bytes"])),
        ("peak RssAnon GiB", lambda r: gib(r["peak_anon_bytes"])),
        ("peak RssFile GiB", lambda r: gib(r["peak_file_bytes"])),
        ("peak RssAnon+RssFile GiB", lambda r: gib(r["peak_total_bytes"])),
        ("VmHWM GiB", lambda r: gib(r["vm_hwm_bytes"])),
        ("peak VRAM GiB", lambda r: gib(r["peak_vram_bytes"])),
        ("output finite", lambda r: str(r["output_finite"])),
    ]
    print(f"{'':28}" + "".join(f"{r['format']:>12}" for r in results))
    for name, cell in rows:
        print(f"{name:28}" + "".join(f"{cell(r):>12}" for r in results))
    first = results[0]
    tokens = first["tokens"]
    print(
        f"tokens: {tokens['image_stream']} image stream ({tokens['noisy']} noisy) + {tokens['image_embeds']} image "
        f"+ {tokens['text']} text = {tokens['total']}; {first['threads']} threads; "
        f"load average {first['load_average'][0]:.1f}; write {'reused' if write_s is None else f'{write_s:.0f} s'}; "
        f"whole run {total_s / 60:.1f} min"
    )
    by_format = {r["format"]: r for r in results}
    if {"bf16", "fp8"} <= set(by_format):
        ratio = by_format["fp8"]["steps"][-1]["streamed_bytes"] / by_format["bf16"]["steps"][-1]["streamed_bytes"]
        print(f"bytes per step fp8 / bf16: {ratio:.3f}; fp8 output vs bf16: {by_format['fp8']['error_vs_bf16']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--vram-budget", type=float, default=None, help="GiB for all weights on the GPU")
    parser.add_argument("--staging", choices=["ring", "pinned"], default="ring", help="CUDA host staging")
    parser.add_argument("--formats", default="bf16,fp8")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "framepack-full-scale")
    parser.add_argument("--keep", action="store_true", help="leave the checkpoints on disk")
    parser.add_argument("--reuse", action="store_true", help="use checkpoints a --keep run left in --dir")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--steps", type=int, default=None, help="denoise calls (default: 1 on cpu, 3 on cuda)")
    parser.add_argument("--preset", default="framepack", help='"medium" for a quick smoke run of this script')
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # one format, in a child process
    args = parser.parse_args()
    args.steps = args.steps or (1 if args.device == "cpu" else 3)
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir / args.measure, args)))
        return

    started = time.perf_counter()
    formats = [f for f in args.formats.split(",") if f]
    if any(f not in ("bf16", "fp8") for f in formats):
        parser.error(f"--formats: choose from bf16, fp8; got {args.formats!r}")
    folders = {f: args.dir / f for f in formats}
    missing = {f: d for f, d in folders.items() if not (args.reuse and (d / ".complete").exists())}
    write_s = None
    if missing:
        print(f"writing {', '.join(missing)} to {args.dir} (free: {gib(shutil.disk_usage(args.dir.parent).free)} GiB)")
        start = time.perf_counter()
        written = write_checkpoints(TransformerConfig.preset(args.preset), missing)
        write_s = time.perf_counter() - start
        for f, d in missing.items():
            (d / ".complete").write_text(json.dumps({"bytes": written[f], "write_s": write_s}))
        print(f"wrote {', '.join(f'{f} {gib(b)} GiB' for f, b in written.items())} in {write_s:.0f} s")
    results = []
    try:
        for fmt in formats:
            command = [sys.executable, "-m", "benchmarks.full_scale", *sys.argv[1:], "--measure", fmt]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            if out.returncode:
                raise SystemExit(f"{fmt} run failed:\n{out.stderr[-4000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if fmt == "fp8" and (args.dir / "bf16-output.pt").exists():  # this run's, or a --keep run's
                results[-1]["error_vs_bf16"] = relative_error(args.dir / "fp8-output.pt", args.dir / "bf16-output.pt")
            print(f"{fmt}: step {results[-1]['steps'][-1]['seconds']:.0f} s", flush=True)
    finally:
        if not args.keep:
            for fmt in formats:
                (args.dir / f"{fmt}-output.pt").unlink(missing_ok=True)
            for d in folders.values():
                shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(OSError):  # the folder itself, when nothing else is in it
                args.dir.rmdir()
    total_s = time.perf_counter() - started
    print_table(results, write_s, total_s)
    print(json.dumps({"write_s": write_s, "total_s": total_s, "results": results}))


if __name__ == "__main__":
    main()
