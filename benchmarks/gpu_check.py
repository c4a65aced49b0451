"""One-command GPU check: run it the day a CUDA device is present.

    python -m benchmarks.gpu_check [--quick] [--repeats N] [--only PART ...] [--json PATH]

(from the repository root). Without a CUDA device it prints one line and exits 0. On one
H200 the run must take < 8 minutes: each part's time is a check against its share
(``PART_SECONDS``). Parts, each in bfloat16 (where native) and float16; an exception is a
FAIL row with its one-line message, and the other dtypes and parts still run:

tiny-step      the tiny transformer's denoising step (full packed context) on the GPU vs
               the CPU float32 step with the same random weights (relative L2 error), and
               streamed at the minimum block budget vs resident (bit-identical), s/step.
real-width     a few real-size blocks (the "framepack" preset cut to 2 double + 4 single
               blocks: inner dim 3072, 24 heads; benchmarks/memory.py's random builder):
               * one step vs CPU float32 at a moderate token count (the CPU reference is
                 slow: 32x32 latents, 16x16 with --quick, ~3.8k / ~1.5k tokens);
               * at the 640 bucket's token count (640x608: 17.5k image + 809 context
                 tokens), resident and streamed one byte under the blocks' bytes and at
                 the minimum budget (--quick: minimum only): streamed output bit-identical
                 to resident; peak ``max_memory_allocated`` vs the plan (non-block weights
                 + the streamer's ``plan.device_bytes`` + the resident run's measured
                 activations: streaming must add nothing unplanned); copy/compute overlap:
                 streamed step <= 1.15 x max(resident step, the streamed bytes copied
                 alone from pinned memory); s/step.
tiny-pipeline  a whole tiny generation (FramePackPipeline.tiny with a wider transformer,
               dtypes as from_pretrained picks them on CUDA) at the smallest VRAM budget the
               planner accepts (components swap, transformer blocks stream): finite
               latents, latents vs the CPU float32 pipeline, peak memory <= the budget.

The steps use timestep 872 and guidance 8 (1000 x 8 = 8000): the model rounds both to its
dtype, as the original does, and these are exact in bf16 and fp16, so the float32
reference sees the same inputs. The sampler's timesteps are not exact, hence the looser
bf16 bound of the whole pipeline. Timings: CUDA events after a synchronize, one warm-up,
median of ``--repeats``. The report ends with a table of every check (measured, bound,
PASS/FAIL/INFO); ``--json PATH`` writes it too. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.memory import random_transformer, step_inputs
from framepack.cli import demo_image
from framepack.components import component_dtypes
from framepack.conditioning import Conditioning, PackedContext
from framepack.config import GenerationConfig
from framepack.errors import ConfigError
from framepack.memory.planner import MemoryPlan
from framepack.memory.streamer import ResidencyPlan, block_nbytes, minimum_budget
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.pipeline import FramePackPipeline
from framepack.precision import default_dtype
from framepack.units import GIB, format_bytes
from framepack.video import find_bucket

PARTS = ("tiny-step", "real-width", "tiny-pipeline")
TIMESTEP, GUIDANCE = 872.0, 8.0  # exact in bf16 and fp16 (see the module docstring)
STEP_REL_L2 = {torch.bfloat16: 2e-2, torch.float16: 5e-3}  # CPU measured ~8e-3 and ~8e-4
PIPELINE_REL_L2 = {torch.bfloat16: 1e-1, torch.float16: 1e-2}  # CPU measured ~3e-2 and ~5e-4
PEAK_OVER_PLAN, OVERLAP = 1.05, 1.15
PART_SECONDS = {"tiny-step": 60.0, "real-width": 300.0, "tiny-pipeline": 120.0}  # 8 minutes in all
PIPELINE_CONFIG = GenerationConfig(window=3, steps=3, resolution=64, seconds=0.8)  # 2 sections
PROMPT = "a dancer"
SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16"}


# --- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One row of the report; ``passed`` None is a measurement without a bound."""

    name: str
    value: float | None
    bound: float | None = None
    passed: bool | None = None
    note: str = ""

    @property
    def status(self) -> str:
        return "INFO" if self.passed is None else "PASS" if self.passed else "FAIL"


def at_most(name: str, value: float, bound: float, note: str = "") -> Check:
    return Check(name, value, bound, value <= bound, note)  # NaN fails: NaN <= x is False


@dataclass
class Report:
    header: str = ""
    checks: list[Check] = dataclasses.field(default_factory=list)

    def add(self, check: Check) -> None:
        self.checks.append(check)
        print(f"  {check.status:4s} {check.name}: {_number(check.value)}"
              + (f" (bound <= {_number(check.bound)})" if check.bound is not None else "")
              + (f"  {check.note}" if check.note else ""), flush=True)  # fmt: skip

    @property
    def failed(self) -> bool:
        return any(c.passed is False for c in self.checks)

    def table(self) -> str:
        """Every check as a row; the failures' notes (errors, figures) again below it."""
        rows = [("check", "measured", "bound", "status")]
        rows += [(c.name, _number(c.value), "-" if c.bound is None else f"<= {_number(c.bound)}", c.status)
                 for c in self.checks]  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [self.header] + ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(2, "  ".join("-" * w for w in widths))
        lines += [f"FAIL {c.name}: {c.note}" for c in self.checks if c.passed is False and c.note]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "header": self.header,
            "passed": not self.failed,
            "checks": [
                {**dataclasses.asdict(c), "value": _json_number(c.value), "status": c.status} for c in self.checks
            ],
        }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) and value != 0 else str(value)


def _json_number(value: float | None) -> float | str | None:
    return value if value is None or math.isfinite(value) else str(value)  # strict JSON has no NaN


def guarded(report: Report, name: str, fn: Callable[[], None]) -> None:
    """Run ``fn``; an exception becomes a FAIL row with its one-line message, and the check goes on."""
    try:
        fn()
    except Exception as error:
        message = (str(error).strip().splitlines() or [""])[0]
        report.add(Check(f"{name}: completed", None, passed=False, note=f"{type(error).__name__}: {message}"))
    gc.collect()  # a failure's tensors go with its traceback: give their device memory back
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_part(report: Report, name: str, part: Callable[[], None], budget_s: float) -> float:
    """Run one part (guarded) and check its time against its share of the run; returns seconds."""
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    guarded(report, name, part)
    seconds = time.perf_counter() - start
    report.add(at_most(f"{name}: seconds", seconds, budget_s))
    return seconds


# --- measuring -------------------------------------------------------------------------


def rel_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.float() - reference).norm() / reference.norm())


def gpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up, by CUDA events."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()  # nothing earlier (nor a side stream) runs inside the interval
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()  # every stream: the streamer's copies end before its last block
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_seconds(nbytes: int, device: torch.device, repeats: int) -> float:
    """Host->device copy of ``nbytes`` from page-locked memory: what streaming must hide."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return gpu_seconds(lambda: target.copy_(host, non_blocking=True), repeats)


def warm_up(device: torch.device) -> None:
    """Allocate cuBLAS(Lt) workspaces now, so later memory baselines already hold them."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a = torch.ones(64, 64, device=device, dtype=dtype)
        F.linear(a, a, a[0])
        a @ a
    torch.cuda.synchronize(device)


StepInputs = tuple[torch.Tensor, Conditioning, PackedContext]


def exact_step_inputs(config: TransformerConfig, height: int, width: int) -> StepInputs:
    """benchmarks.memory's packed-context step inputs with a guidance exact in bf16/fp16."""
    latents, cond, context = step_inputs(config, height, width)
    return latents, dataclasses.replace(cond, guidance=torch.tensor([GUIDANCE])), context


def in_dtype(base: FramePackTransformer, dtype: torch.dtype) -> FramePackTransformer:
    """A copy of float32 ``base`` cast as ``random_transformer(config, dtype)`` casts it (same
    weights, rounded; float32 head), without drawing the weights again (minutes at real width)."""
    model = copy.deepcopy(base).to(dtype)
    model.proj_out.float()
    return model


def cpu_step(model: FramePackTransformer, inputs: StepInputs) -> torch.Tensor:
    latents, cond, context = inputs
    return model.denoise(latents, torch.tensor([TIMESTEP]), model.prepare(cond, context, latents.shape))


@dataclass(frozen=True)
class StepRun:
    output: torch.Tensor  # float32, on the host
    seconds: float  # median s/step
    peak: int  # peak device bytes above the baseline, weights included
    held: int  # device bytes the model holds before running (weights)
    plan: ResidencyPlan


def gpu_step(model: FramePackTransformer, inputs: StepInputs, device: torch.device, budget: int | None,
             repeats: int) -> StepRun:  # fmt: skip
    """Stream ``model``'s blocks within ``budget`` (None: resident) and time its step."""
    latents, cond, context = inputs
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    streamer = model.enable_streaming(device, budget)
    try:
        held = torch.cuda.memory_allocated(device) - base
        torch.cuda.reset_peak_memory_stats(device)
        noisy, timestep = latents.to(device), torch.tensor([TIMESTEP], device=device)
        prepared = model.prepare(cond, context, latents.shape)
        output = model.denoise(noisy, timestep, prepared).float().cpu()
        seconds = gpu_seconds(lambda noisy=noisy, prepared=prepared: model.denoise(noisy, timestep, prepared), repeats)
        peak = torch.cuda.max_memory_allocated(device) - base
        del prepared, noisy
    finally:
        model.disable_streaming()
    return StepRun(output, seconds, peak, held, streamer.plan)


# --- the parts -------------------------------------------------------------------------


def tiny_step(report: Report, device: torch.device, dtypes: list[torch.dtype], repeats: int) -> None:
    config = TransformerConfig.preset("tiny")
    inputs = exact_step_inputs(config, 16, 16)
    base = random_transformer(config, torch.float32)
    reference = cpu_step(base, inputs)

    def check(dtype: torch.dtype, name: str) -> None:
        model = in_dtype(base, dtype)
        budget = minimum_budget([block_nbytes(b) for b in model.streamable_blocks()])
        resident = gpu_step(model, inputs, device, None, repeats)
        streamed = gpu_step(model, inputs, device, budget, repeats)
        report.add(at_most(f"{name}: rel L2 vs CPU fp32", rel_l2(resident.output, reference), STEP_REL_L2[dtype]))
        report.add(at_most(f"{name}: streamed vs resident max |diff|",
                           float((streamed.output - resident.output).abs().max()), 0.0, str(streamed.plan)))  # fmt: skip
        report.add(Check(f"{name}: s/step resident", resident.seconds))
        report.add(Check(f"{name}: s/step streamed (minimum budget)", streamed.seconds))

    for dtype in dtypes:
        name = f"tiny step {SHORT[dtype]}"
        guarded(report, name, lambda: check(dtype, name))


def real_width(report: Report, device: torch.device, dtypes: list[torch.dtype], repeats: int, quick: bool) -> None:
    config = TransformerConfig.preset("framepack", num_layers=2, num_single_layers=4)
    side = 16 if quick else 32
    parity_inputs = exact_step_inputs(config, side, side)
    start = time.perf_counter()
    base = random_transformer(config, torch.float32)
    print(f"  random float32 weights: {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    reference = cpu_step(base, parity_inputs)
    print(f"  CPU float32 reference at {side}x{side} latents: {time.perf_counter() - start:.1f} s", flush=True)
    height, width = find_bucket(1, 1, 640)  # the square image's bucket at 640
    full_inputs = exact_step_inputs(config, height // 8, width // 8)

    def check(dtype: torch.dtype, name: str) -> None:
        model = in_dtype(base, dtype)
        parity = gpu_step(model, parity_inputs, device, None, 1)
        report.add(at_most(f"{name}: rel L2 vs CPU fp32 ({side}x{side} latents)",
                           rel_l2(parity.output, reference), STEP_REL_L2[dtype]))  # fmt: skip
        sizes = [block_nbytes(b) for b in model.streamable_blocks()]
        fixed = model.streaming_sizes().fixed_bytes
        # One byte under resident streams the fewest blocks the planner needs to save a byte.
        budgets = {"just-under": sum(sizes) - 1, "minimum": minimum_budget(sizes)}
        if quick:
            del budgets["just-under"]
        resident = gpu_step(model, full_inputs, device, None, repeats)
        activations = resident.peak - resident.held
        report.add(Check(f"{name}: s/step resident ({height}x{width} bucket)", resident.seconds,
                         note=f"{format_bytes(sum(sizes))} of blocks; peak {format_bytes(resident.peak)}, "
                              f"activations {format_bytes(activations)}"))  # fmt: skip
        for label, budget in budgets.items():
            run = gpu_step(model, full_inputs, device, budget, repeats)
            copy_s = copy_seconds(run.plan.streamed_bytes, device, repeats)
            planned = fixed + run.plan.device_bytes + activations
            diff = float((run.output - resident.output).abs().max())
            report.add(at_most(f"{name} {label}: streamed vs resident max |diff|", diff, 0.0, str(run.plan)))
            report.add(at_most(f"{name} {label}: peak / plan", run.peak / planned, PEAK_OVER_PLAN,
                               f"peak {format_bytes(run.peak)}, plan {format_bytes(planned)} (weights "
                               f"{format_bytes(fixed + run.plan.device_bytes)}, held {format_bytes(run.held)})"))  # fmt: skip
            bound = max(resident.seconds, copy_s)
            report.add(at_most(f"{name} {label}: streamed / max(compute, copy)", run.seconds / bound, OVERLAP,
                               f"streamed {run.seconds * 1e3:.1f} ms, compute {resident.seconds * 1e3:.1f} ms, "
                               f"copy {format_bytes(run.plan.streamed_bytes)} {copy_s * 1e3:.1f} ms "
                               f"({run.plan.streamed_bytes / copy_s / GIB:.1f} GiB/s)"))  # fmt: skip
            report.add(Check(f"{name} {label}: s/step streamed", run.seconds))

    for dtype in dtypes:
        name = f"real-width {SHORT[dtype]}"
        guarded(report, name, lambda: check(dtype, name))


def tiny_pipeline_on(device: torch.device, dtype: torch.dtype | None) -> FramePackPipeline:
    """The tiny pipeline with a transformer wide enough (~35 MB of float32 blocks) that the
    smallest budget streams it; ``dtype`` None keeps float32, else dtypes are set as
    ``from_pretrained`` sets them on CUDA. Weights stay on the host for the planner."""
    components = FramePackPipeline.tiny(seed=0).components
    config = dataclasses.replace(components.transformer.config, num_attention_heads=8, attention_head_dim=32,
                                 rope_axes_dim=(8, 12, 12))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = FramePackTransformer(config).eval().requires_grad_(False)
    components = dataclasses.replace(components, transformer=transformer)
    if dtype is not None:
        main, side = component_dtypes(torch.device("cuda"), dtype)
        for name, module in components.modules().items():
            module.to(main if name == "transformer" else side)
        if config.fp32_output_head:
            transformer.proj_out.float()
    return FramePackPipeline(components, device=device)


def smallest_budget(pipe: FramePackPipeline, config: GenerationConfig) -> tuple[int, MemoryPlan]:
    """Set the smallest budget (to 2 %) the planner accepts; refusals are pure arithmetic, no device work."""
    budget = 1 << 20
    while True:
        try:
            return budget, pipe.set_vram_budget(budget / GIB, resolution=config.resolution, window=config.window)
        except ConfigError:
            budget = int(budget * 1.02)


def tiny_pipeline(report: Report, device: torch.device, dtypes: list[torch.dtype]) -> None:
    config, image = PIPELINE_CONFIG, demo_image(96)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        reference = tiny_pipeline_on(torch.device("cpu"), None).generate(image, PROMPT, config, run_dir=f"{folder}/cpu")
        print(f"  CPU float32 reference generation: {time.perf_counter() - start:.1f} s", flush=True)

        def check(dtype: torch.dtype, name: str) -> None:
            pipe = tiny_pipeline_on(device, dtype)
            budget, plan = smallest_budget(pipe, config)
            streamed = len(plan.streaming["transformer"].streamed) if "transformer" in plan.streaming else 0
            report.add(Check(f"{name}: budget swaps and streams", float(streamed),
                             passed=plan.swap_components and streamed > 0,
                             note=f"budget {format_bytes(budget)}; transformer blocks streamed: {streamed}"))  # fmt: skip
            gc.collect()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            video = pipe.generate(image, PROMPT, config, run_dir=f"{folder}/{SHORT[dtype]}")
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(device) - base
            latents = video.latents.float().cpu()
            report.add(at_most(f"{name}: non-finite latents", float((~torch.isfinite(latents)).sum()), 0.0))
            report.add(at_most(f"{name}: latents rel L2 vs CPU fp32", rel_l2(latents, reference.latents),
                               PIPELINE_REL_L2[dtype]))  # fmt: skip
            report.add(at_most(f"{name}: peak / budget", peak / budget, 1.0,
                               f"peak {format_bytes(peak)} of {format_bytes(budget)}"))  # fmt: skip
            streamer = pipe.components.transformer.streamer
            moved = format_bytes(streamer.stats.transferred_bytes) if streamer is not None else "nothing"
            report.add(Check(f"{name}: s/generation", seconds, note=f"transformer blocks copied in: {moved}"))

        for dtype in dtypes:
            name = f"tiny pipeline {SHORT[dtype]}"
            guarded(report, name, lambda: check(dtype, name))


# --- command line ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller CPU reference, one budget")
    parser.add_argument("--repeats", type=int, help="timed repeats per configuration (default 5, 3 with --quick)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="run these parts only")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing run (this would check the tiny and real-width transformer steps and a tiny "
              "pipeline in bf16/fp16 on the GPU: parity with CPU float32, streamed == resident, peak memory vs plan, "
              "copy/compute overlap, s/step)")  # fmt: skip
        return 0
    device = torch.device("cuda", torch.cuda.current_device())
    dtypes = [torch.bfloat16, torch.float16] if default_dtype(device) == torch.bfloat16 else [torch.float16]
    names = ", ".join(SHORT[d] for d in dtypes)
    report = Report(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, dtypes {names}, "
                    f"repeats {args.repeats}{', quick' if args.quick else ''}")  # fmt: skip
    print(report.header, flush=True)
    warm_up(device)
    parts: dict[str, Callable[[], None]] = {
        "tiny-step": lambda: tiny_step(report, device, dtypes, args.repeats),
        "real-width": lambda: real_width(report, device, dtypes, args.repeats, args.quick),
        "tiny-pipeline": lambda: tiny_pipeline(report, device, dtypes),
    }
    total = sum(run_part(report, name, parts[name], PART_SECONDS[name]) for name in args.only)
    report.add(at_most("total: seconds", total, sum(PART_SECONDS[name] for name in args.only)))
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
    print("FAIL" if report.failed else "PASS")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
