"""Memory benchmark: host RSS of mmap vs copied weights and of short vs long videos, and the
cost of layer streaming.

    python -m benchmarks.memory [--only PART ...] [--mib 256] [--repeats 5] [--steps 2]

(from the repository root: the pipeline part writes its checkpoints with ``tests`` helpers)

1. The whole pipeline: a random checkpoint tree in the real layout (benchmarks/checkpoints.py,
   ~1 GB of float32 safetensors, most of it Llama's full-vocabulary embedding) is loaded with
   FramePackPipeline.from_pretrained and generates one video at resolution 64, in a fresh
   subprocess per run. Peak RSS (VmHWM) of the whole process, with storage="mmap" vs "copy"
   (5 s video), and for a 5 s vs a 60 s video (storage="copy"; target: within 10 %, host
   memory flat in video length). Also printed: RSS after imports and after loading
   (anonymous / file-backed), the generation's own peak above the loaded weights (VmHWM is
   reset after loading) and RSS after the first and the last section.
2. Host memory: a toy transformer-like checkpoint is loaded and run in fresh subprocesses,
   alternating storage="copy" and storage="mmap". Printed per storage: growth of peak RSS
   (ru_maxrss: counts file pages too, but growth below the import-time peak is invisible) and of anonymous RSS
   (RssAnon: memory the OS cannot drop) and of file-backed RSS (RssFile: reclaimable page cache).
3. Streaming on this machine's CPU: one pass over the blocks fully resident vs streamed
   at the minimum budget (copies are memcpy here, so this measures bookkeeping cost).
4. With CUDA: resident step time, streamed step time, and the time of the copies alone,
   for a compute-bound and a copy-bound token count; target streamed <= 1.15 x
   max(compute, copy). Also peak device memory vs the budget.
5. The real model class: one FramePackTransformer denoising step (full packed context)
   resident vs streamed at the minimum block budget and one byte under resident, through
   ``enable_streaming``: on the CPU the "medium" config in float32; with CUDA a
   real-width model (the "framepack" preset cut to 2 double + 4 single blocks) in the
   GPU's compute dtype, plus float16 (float32 islands) vs bfloat16 where both run.
Timings are medians of interleaved repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from benchmarks.checkpoints import REPO_ROOT, TreeSizes, tree_bytes, write_checkpoint_tree
from framepack.cli import demo_image
from framepack.conditioning import Conditioning, PackedContext
from framepack.config import GenerationConfig
from framepack.memory.streamer import LayerStreamer, block_nbytes, minimum_budget
from framepack.models.configuration import ModelConfig
from framepack.models.loading import PretrainedModel
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.pipeline import FramePackPipeline
from framepack.precision import default_dtype
from framepack.units import format_bytes


@dataclasses.dataclass(frozen=True)
class BenchConfig(ModelConfig):
    width: int = 1024
    depth: int = 8


class MLPBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x)), approximate="tanh"))


class BenchStack(PretrainedModel):
    config_class = BenchConfig

    def __init__(self, config: BenchConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(MLPBlock(config.width) for _ in range(config.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def write_checkpoint(folder: Path, mib: int) -> None:
    width = 1024
    block_mib = (8 * width * width * 4) / 2**20  # up + down weights, float32
    config = BenchConfig(width=width, depth=max(1, round(mib / block_mib)))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BenchStack(config).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    save_file(
        {k: torch.randn(s, generator=g) for k, s in shapes.items()}, folder / "diffusion_pytorch_model.safetensors"
    )
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(config)))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def run_probe(*args: str) -> dict[str, float]:
    """Run this module with ``args`` in a fresh interpreter; its last stdout line is JSON."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"probe {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe(folder: str, storage: str) -> None:
    """Runs in a fresh subprocess: load, run once, print memory growth as JSON."""
    torch.set_num_threads(1)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    anon, file = _status_kib("RssAnon"), _status_kib("RssFile")
    start = time.perf_counter()
    model = BenchStack.from_pretrained(folder, storage=storage)  # type: ignore[arg-type]
    with torch.no_grad():
        model(torch.randn(4, model.config.width))
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "maxrss_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss) / 1024,
                "anon_mib": (_status_kib("RssAnon") - anon) / 1024,
                "file_mib": (_status_kib("RssFile") - file) / 1024,
            }
        )
    )


def host_memory(mib: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp), mib)
        size = Path(tmp, "diffusion_pytorch_model.safetensors").stat().st_size / 2**20
        runs: dict[str, list[dict[str, float]]] = {"copy": [], "mmap": []}
        for _ in range(repeats):
            for storage in runs:  # interleaved so both see the same machine load
                runs[storage].append(run_probe("--probe", tmp, storage))
    print(f"host memory, {size:.0f} MiB checkpoint, load + one forward, median of {repeats}:")
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    for storage, m in med.items():
        print(
            f"  {storage:5s} peak RSS +{m['maxrss_mib']:7.1f} MiB   anonymous +{m['anon_mib']:7.1f} MiB   "
            f"file-backed +{m['file_mib']:7.1f} MiB   "
            f"load+run {m['seconds']:.3f} s"
        )
    print(
        f"  anonymous memory mmap/copy = {med['mmap']['anon_mib'] / max(med['copy']['anon_mib'], 1e-9):.3f}; "
        f"load time mmap/copy = {med['mmap']['seconds'] / med['copy']['seconds']:.2f}"
    )


PROMPT = "The man dances energetically, leaping mid-air with fluid arm swings and quick footwork."


def generation_config(seconds: float, steps: int) -> GenerationConfig:
    return GenerationConfig(seconds=seconds, steps=steps, resolution=64, window=9)


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs sets VmHWM back to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def generation_probe(folder: str, storage: str, seconds: str, steps: str) -> None:
    """Runs in a fresh subprocess: load the tree, generate one video, print memory as JSON (MiB)."""
    tree = Path(folder)
    imported = _status_kib("VmRSS")
    start = time.perf_counter()
    pipe = FramePackPipeline.from_pretrained(
        tree / "transformer", hunyuan=tree / "hunyuan", redux=tree / "redux", device="cpu",
        storage=storage,  # type: ignore[arg-type]
    )  # fmt: skip
    load_seconds = time.perf_counter() - start
    load_peak = _status_kib("VmHWM")
    loaded = {field: _status_kib(field) for field in ("VmRSS", "RssAnon", "RssFile")}
    _reset_peak_rss()
    config = generation_config(float(seconds), int(steps))
    section_rss = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        run = pipe.stream(demo_image(config.resolution), PROMPT, config, run_dir=run_dir)
        for _ in run:
            section_rss.append(_status_kib("VmRSS"))
        frames = run.result().num_frames
    generate_seconds = time.perf_counter() - start
    generation_peak = _status_kib("VmHWM")
    mib = 1 / 1024
    print(
        json.dumps(
            {
                "peak_mib": max(load_peak, generation_peak) * mib,
                "load_peak_mib": load_peak * mib,
                "generation_peak_mib": generation_peak * mib,
                "imported_mib": imported * mib,
                "loaded_mib": loaded["VmRSS"] * mib,
                "loaded_anon_mib": loaded["RssAnon"] * mib,
                "loaded_file_mib": loaded["RssFile"] * mib,
                "generation_growth_mib": (generation_peak - loaded["VmRSS"]) * mib,
                "first_section_mib": section_rss[0] * mib,
                "last_section_mib": section_rss[-1] * mib,
                "sections": len(section_rss),
                "frames": frames,
                "load_s": load_seconds,
                "generate_s": generate_seconds,
            }
        )
    )


def pipeline_memory(steps: int, short: float = 5.0, long: float = 60.0, sizes: TreeSizes | None = None) -> None:
    sizes = sizes or TreeSizes()
    cases = [("copy", short), ("mmap", short), ("copy", long)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_checkpoint_tree(Path(tmp), sizes)
        size = tree_bytes(Path(tmp)) / 2**20
        print(
            f"whole pipeline: wrote a random checkpoint tree in {time.perf_counter() - start:.0f} s: {size:.0f} MiB "
            f"of float32 safetensors; {sizes.describe()}"
        )
        runs = {(storage, seconds): run_probe("--generation-probe", tmp, storage, str(seconds), str(steps))
                for storage, seconds in cases}  # fmt: skip
    config = generation_config(short, steps)
    print(
        f"  {config.resolution}px image, GenerationConfig(resolution={config.resolution}, steps={steps}, "
        f"window={config.window}, seconds=...), device cpu float32, one fresh process per run; MiB:"
    )
    print(
        "  storage  video  sections (frames)  peak RSS (load / generation)  after imports  after load (anon / file)"
        "  generation over load  after 1st / last section  load s  generate s"
    )
    for (storage, seconds), r in runs.items():
        print(
            f"  {storage:7s} {seconds:4.0f} s  {r['sections']:8d} ({r['frames']:6d})  {r['peak_mib']:8.0f} "
            f"({r['load_peak_mib']:4.0f} / {r['generation_peak_mib']:4.0f})  {r['imported_mib']:17.0f}  "
            f"{r['loaded_mib']:10.0f} ({r['loaded_anon_mib']:4.0f} / {r['loaded_file_mib']:4.0f})  "
            f"{r['generation_growth_mib']:+20.0f}  {r['first_section_mib']:11.0f} / {r['last_section_mib']:4.0f}  "
            f"{r['load_s']:6.1f}  {r['generate_s']:10.1f}"
        )
    copy_short, mmap_short, copy_long = runs.values()
    print(
        f"  mmap vs copy ({short:.0f} s): peak RSS {mmap_short['peak_mib']:.0f} / {copy_short['peak_mib']:.0f} MiB = "
        f"{mmap_short['peak_mib'] / copy_short['peak_mib']:.3f}; anonymous after load = "
        f"{mmap_short['loaded_anon_mib'] / copy_short['loaded_anon_mib']:.3f}"
    )
    print(
        f"  {long:.0f} s vs {short:.0f} s (copy): peak RSS during generation "
        f"{copy_long['generation_peak_mib']:.0f} / {copy_short['generation_peak_mib']:.0f} MiB = "
        f"{copy_long['generation_peak_mib'] / copy_short['generation_peak_mib']:.3f} (target <= 1.10); whole process "
        f"(includes the load's transient) {copy_long['peak_mib'] / copy_short['peak_mib']:.3f}; above the loaded "
        f"weights {copy_long['generation_growth_mib']:+.0f} vs {copy_short['generation_growth_mib']:+.0f} MiB"
    )


def median_time(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(median_time(fn, sync))
    return {k: statistics.median(v) for k, v in times.items()}


def make_blocks(width: int, depth: int, dtype: torch.dtype) -> list[nn.Module]:
    torch.manual_seed(0)
    return [MLPBlock(width).to(dtype).requires_grad_(False) for _ in range(depth)]


def run_pass(streamer: LayerStreamer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for block in streamer.iterate():
            x = block(x)
    return x


def cpu_streaming(repeats: int) -> None:
    blocks = make_blocks(512, 8, torch.float32)
    resident = LayerStreamer(copy.deepcopy(blocks), "cpu", None)
    budget = minimum_budget([block_nbytes(b) for b in blocks])
    streamed = LayerStreamer(blocks, "cpu", budget)
    x = torch.randn(256, 512)
    assert torch.equal(run_pass(resident, x), run_pass(streamed, x))
    t = interleaved(
        {"resident": lambda: run_pass(resident, x), "streamed": lambda: run_pass(streamed, x)}, repeats, lambda: None
    )
    print(f"CPU streaming, 8 blocks, budget {format_bytes(budget)} ({streamed.plan}):")
    print(
        f"  resident {t['resident'] * 1e3:.2f} ms   streamed {t['streamed'] * 1e3:.2f} ms   "
        f"streamed/resident = {t['streamed'] / t['resident']:.2f}"
    )


def gpu_streaming(repeats: int) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    dtype = default_dtype(device)
    sync = torch.cuda.synchronize
    width, depth = 3072, 24  # ~150 MiB per block in 16-bit, close to a real transformer block's matmuls
    blocks = make_blocks(width, depth, dtype)
    sizes = [block_nbytes(b) for b in blocks]
    resident = LayerStreamer([copy.deepcopy(b) for b in blocks], device, None)
    for label, budget in (("minimum", minimum_budget(sizes)), ("half", sum(sizes) // 2)):
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        streamer = LayerStreamer(blocks, device, budget)
        held = torch.cuda.memory_allocated(device) - before
        streamed_bytes = streamer.plan.streamed_bytes
        host = torch.empty(streamed_bytes, dtype=torch.uint8, pin_memory=True)
        target = torch.empty(streamed_bytes, dtype=torch.uint8, device=device)
        print(
            f"GPU streaming ({torch.cuda.get_device_name(device)}, {dtype}), budget {label} {format_bytes(budget)}: "
            f"{streamer.plan}; streamer holds {format_bytes(held)}"
        )
        for tokens in (8192, 512):  # compute-bound, then copy-bound
            x = torch.randn(1, tokens, width, device=device, dtype=dtype)
            assert torch.equal(run_pass(resident, x), run_pass(streamer, x))
            torch.cuda.reset_peak_memory_stats(device)
            t = interleaved(
                {
                    "compute": lambda x=x: run_pass(resident, x),
                    "streamed": lambda x=x, streamer=streamer: run_pass(streamer, x),
                    "copy": lambda target=target, host=host: target.copy_(host, non_blocking=True),
                },
                repeats,
                sync,
            )
            bound = max(t["compute"], t["copy"])
            print(
                f"  {tokens:5d} tokens: resident {t['compute'] * 1e3:7.2f} ms  streamed {t['streamed'] * 1e3:7.2f} ms  "
                f"copy alone {t['copy'] * 1e3:7.2f} ms ({streamed_bytes / t['copy'] / 2**30:.1f} GiB/s)  "
                f"streamed/max(compute, copy) = {t['streamed'] / bound:.3f} (target <= 1.15)"
            )
        del streamer, host, target


def random_transformer(config: TransformerConfig, dtype: torch.dtype) -> FramePackTransformer:
    """Random weights at ~1/sqrt(fan_in) (vectors small) so activations stay in range, on the CPU."""
    torch.manual_seed(0)
    model = FramePackTransformer(config).eval().requires_grad_(False)
    for p in model.parameters():
        p.normal_(0, 1 / p[0].numel() ** 0.5 if p.ndim > 1 else 0.1)
    model = model.to(dtype)
    model.proj_out.float()  # fp32 output head, as from_pretrained keeps it
    return model


def step_inputs(config: TransformerConfig, height: int, width: int) -> tuple[torch.Tensor, Conditioning, PackedContext]:
    """A last inverted section: 9-frame window with the 1x, 2x and 4x clean history, 80-token text."""
    g = torch.Generator().manual_seed(1)
    w = 9
    latents = torch.randn(1, 16, w, height, width, generator=g)
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[:, :80] = True
    text = torch.randn(1, 256, config.text_embed_dim, generator=g) * mask[..., None]
    cond = Conditioning(
        text,
        mask,
        torch.randn(1, config.pooled_projection_dim, generator=g),
        torch.tensor([10.0]),
        torch.randn(1, 729, config.image_proj_dim, generator=g),
    )
    pre, latent, post, two, four = torch.arange(0, 1 + w + 1 + 2 + 16)[None].split([1, w, 1, 2, 16], dim=1)
    clean = [torch.randn(1, 16, n, height, width, generator=g) for n in (2, 2, 16)]
    context = PackedContext(latent, clean[0], torch.cat([pre, post], 1), clean[1], two, clean[2], four)
    return latents, cond, context


def transformer_streaming(repeats: int, device: torch.device) -> None:
    cuda = device.type == "cuda"
    if cuda:
        config, size = TransformerConfig.preset("framepack", num_layers=2, num_single_layers=4), (80, 80)
    else:
        config, size = TransformerConfig.preset("medium"), (32, 24)
    dtypes = [default_dtype(device)]
    if cuda and dtypes[0] == torch.bfloat16:
        dtypes.append(torch.float16)  # the float32-island path, for its cost
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    latents, cond, context = step_inputs(config, *size)
    timestep = torch.tensor([875.0])
    for dtype in dtypes:
        base = random_transformer(config, dtype)
        sizes = [block_nbytes(b) for b in base.streamable_blocks()]
        # One byte short of resident: how much the planner streams to save the first byte.
        budgets = {"resident": None, "just_under": sum(sizes) - 1, "minimum": minimum_budget(sizes)}
        models, steps = {}, {}
        for label, budget in budgets.items():
            model = copy.deepcopy(base) if label != "minimum" else base
            models[label] = model
            streamer = model.enable_streaming(device, budget)
            prepared = model.prepare(cond, context, latents.shape)
            steps[label] = lambda m=model, p=prepared: m.denoise(latents, timestep, p)
            print(f"  {label:10s} {streamer.plan}")
        outs = {label: step() for label, step in steps.items()}
        assert all(torch.equal(o, outs["resident"]) for o in outs.values()), "streamed output differs"
        t = interleaved(steps, repeats, sync)
        print(
            f"transformer step on {device} ({dtype}, inner dim {config.inner_dim}, {len(sizes)} blocks, "
            f"{format_bytes(sum(sizes))} of blocks):"
        )
        print(
            "  "
            + "   ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items())
            + "   "
            + "   ".join(f"{k}/resident = {t[k] / t['resident']:.2f}" for k in ("just_under", "minimum"))
        )
        del models, steps, outs, base


PARTS = ["pipeline", "host", "streaming"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="checkpoint size for the host-memory test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="sampler steps of the whole-pipeline runs")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="run these parts only")
    parser.add_argument("--probe", nargs=2, metavar=("FOLDER", "STORAGE"), help=argparse.SUPPRESS)
    parser.add_argument("--generation-probe", nargs=4, metavar=("FOLDER", "STORAGE", "SECONDS", "STEPS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe)
        return
    if args.generation_probe:
        generation_probe(*args.generation_probe)
        return
    if "pipeline" in args.only:
        pipeline_memory(args.steps)
    if "host" in args.only:
        host_memory(args.mib, args.repeats)
    if "streaming" in args.only:
        cpu_streaming(args.repeats)
        transformer_streaming(args.repeats, torch.device("cpu"))
        if torch.cuda.is_available():
            gpu_streaming(args.repeats)
            transformer_streaming(args.repeats, torch.device("cuda", torch.cuda.current_device()))
        else:
            print("no CUDA device: GPU streaming figures skipped")


if __name__ == "__main__":
    main()
