"""The cost model against whole pipeline runs on this CPU: predicted vs measured time and peak RSS.

    python -m benchmarks.cost_validation [--only NAME ...] [--repeats N]

Per row, ``--repeats`` pairs (default 3), one after the other: a fresh subprocess times the
machine's rates at the run's shapes (``framepack.cost.measure``: seconds, just before the run,
so that a busy machine's load is in both; among them one real double and one single block of
the run's transformer and the rest of its call at the run's token counts, a UniPC step, a real
encode and decode by a VAE of the run's config and an mp4 of the bucket's frames) and
estimates; then a fresh subprocess (its own peak RSS) builds the pipeline (the tiny models, or
the tiny encoders and VAE with the "medium" transformer), resets its peak RSS
(``/proc/self/clear_refs``) and times one cold ``pipe.stream`` run to the end (as ``framepack
generate`` makes it; sampling is the sections' own ``seconds``, decode the sum of the VAE's
``decode`` calls). A row gives each figure's median over its pairs, the median of the pairs'
own ratios (measured over predicted) and their range: the machine is shared, its speed drifts by tens of percent within minutes
and the allocator's peak moves by some percent from process to process, so one pair is one
sample of both.

Time: predicted ``CostEstimate.seconds.total`` (no load: the models are built in memory;
the mp4 and previews included) vs the wall time of the run; target within +-25 %.
Peak RSS: predicted = RSS before the pipeline was built (the interpreter, torch, PyAV and
every module of ours a run imports: measured, not modelled) + every weight's bytes
(``MemoryEstimate.host_bytes``, Llama's host-side embedding table included) +
``MemoryEstimate.host_activation_bytes``: every phase's working set together (text, image,
sampling, decode: the allocator keeps what a phase freed), the image and decode phases from
the probes' measured peak RSS growth per pixel where larger than the planner's estimates;
measured = VmHWM over the generation; target within +-15 %.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

RUNS = {
    # name: (transformer preset or None for tiny, resolution, steps, seconds, cache)
    "tiny-128-8-none": (None, 128, 8, 1.0, "none"),
    "tiny-192-8-none": (None, 192, 8, 1.0, "none"),
    "tiny-128-16-magcache": (None, 128, 16, 1.0, "magcache"),
    "medium-128-6-none": ("medium", 128, 6, 1.0, "none"),
    "medium-128-12-teacache": ("medium", 128, 12, 1.0, "teacache"),
}
PROMPT = "a cat walks across the garden"
RATES = (
    "matmul_flops",
    "attention_flops",
    "conv_flops",
    "memory_bandwidth",
    "kernel_overhead_s",
    "video_encode_pixels",
    "decode_bytes_per_pixel",
    "encode_bytes_per_pixel",
    "decode_tile_fixed_s",
    "decode_tile_factors",
    "decode_tile_latent",
)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _models(preset: str | None):
    """The run's model configs: the tiny ones, or the tiny encoders and VAE with a preset transformer."""
    from framepack.components import tiny_configs
    from framepack.cost.memory import ModelConfigs
    from framepack.models.transformer import TransformerConfig

    if preset is None:
        return ModelConfigs.tiny()
    t = tiny_configs()["transformer"]
    return ModelConfigs.tiny(
        TransformerConfig.preset(
            preset,
            text_embed_dim=t.text_embed_dim,
            pooled_projection_dim=t.pooled_projection_dim,
            image_proj_dim=t.image_proj_dim,
        )
    )


def _config(name: str):
    from framepack import GenerationConfig

    _, resolution, steps, seconds, cache = RUNS[name]
    return GenerationConfig(seconds=seconds, steps=steps, resolution=resolution, cache=cache, seed=0)


def _generate(name: str, queue: multiprocessing.Queue) -> None:
    """In a fresh process: build the pipeline, time ``generate``; its peak RSS and its baseline."""
    import torch

    import framepack.pipeline
    import framepack.video.mp4
    import framepack.video.preview_mp4  # noqa: F401
    from framepack import FramePackPipeline
    from framepack.cli import demo_image
    from framepack.components import tiny_components
    from framepack.models.transformer import FramePackTransformer

    config = _config(name)
    baseline = _status_kib("VmRSS") * 1024
    components = tiny_components(seed=0)
    models = _models(RUNS[name][0])
    if RUNS[name][0] is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            components.transformer = FramePackTransformer(models.transformer).eval().requires_grad_(False)
    pipe = FramePackPipeline(components, device="cpu")
    image = demo_image(config.resolution)
    decode_s = _timed(pipe.components.vae, "decode")
    encode_s = _timed(pipe, "encode")  # the text and image encoders and the start image's VAE encode
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    started = time.perf_counter()
    run = pipe.stream(image, PROMPT, config)
    sections = list(run)
    sampling = sum(section.seconds for section in sections)
    computed = sum(s.cache_stats.computed_count for s in sections if s.cache_stats is not None)
    run.result()
    queue.put(dict(measured_s=time.perf_counter() - started, measured_sampling_s=sampling, measured_decode_s=sum(decode_s),
                   measured_encoders_s=sum(encode_s),
                   measured_computed_steps=computed,
                   measured_rss=_status_kib("VmHWM") * 1024, baseline_rss=baseline))  # fmt: skip


def _timed(owner: object, method: str) -> list[float]:
    """Wrap ``owner.method`` so that each call's seconds are appended to the returned list."""
    seconds: list[float] = []
    inner = getattr(owner, method)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(owner, method, timed)
    return seconds


def _predict(name: str, queue: multiprocessing.Queue) -> None:
    """In a fresh process (its allocator cold, as a run's and ``plan --measure``'s are): the
    estimate with this machine's rates timed now, at the run's shapes."""
    import torch

    from framepack.cli import demo_image
    from framepack.cost.estimate import decode_tile_sizes, estimate
    from framepack.cost.measure import measure_profile
    from framepack.cost.profiles import device_profile
    from framepack.prompt import HUNYUAN_VIDEO_TEMPLATE, MAX_PROMPT_TOKENS, TEMPLATE_CROP_START
    from framepack.tiny import tiny_llama_tokenizer

    config, models = _config(name), _models(RUNS[name][0])
    image = demo_image(config.resolution)
    templated = tiny_llama_tokenizer()(
        HUNYUAN_VIDEO_TEMPLATE.format(PROMPT), max_length=MAX_PROMPT_TOKENS + TEMPLATE_CROP_START
    )
    text = int(templated.length) - TEMPLATE_CROP_START

    def predict(profile):
        return estimate(config, profile, models=models, image_size=image.shape[:2], text_tokens=text,
                        dtype=torch.float32, from_disk=False)  # fmt: skip

    table = predict(device_profile("cpu"))
    t = models.transformer
    profile = measure_profile(
        device_profile("cpu"),
        "cpu",
        dtype=torch.float32,
        transformer=t,
        shape=table.shape,
        vae=models.vae,
        frame_size=table.bucket,
        decode_tiles=decode_tile_sizes(config, models.vae),
    )
    predicted = predict(profile)
    s, m = predicted.seconds, predicted.memory
    queue.put(dict(
        predicted_s=s.total,
        predicted_sampling_s=s.sampling,
        predicted_decode_s=s.decode,
        predicted_encoders_s=s.encoders,
        predicted_computed_steps=predicted.computed_share * predicted.steps * predicted.plan.num_sections,
        table_s=table.seconds.total,
        parts=dict(encoders=s.encoders, sampling=s.sampling, prepare=s.prepare, decode=s.decode, video=s.video),
        weights_and_activations=m.host_bytes + m.host_activation_bytes,
        host_bytes=m.host_bytes,
        activation_bytes=m.activation_bytes,
        rates={k: getattr(predicted.profile, k) for k in RATES},
    ))  # fmt: skip


def _in_child(context, target, name: str) -> dict:
    queue = context.Queue()
    child = context.Process(target=target, args=(name, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def _median_run(name: str, repeats: int, context) -> dict:
    """``repeats`` pairs of (prediction, run) of ``name``, each in fresh processes, one after the
    other: each field's median over the pairs, and each pair's ratios (measured / predicted)."""
    pairs = []
    for _ in range(repeats):
        pair = _in_child(context, _predict, name)  # a fresh process, as `plan --measure` is
        pair.update(_in_child(context, _generate, name))
        pair["predicted_rss"] = pair["baseline_rss"] + pair["weights_and_activations"]
        pairs.append(pair)
    fields = [k for k, v in pairs[0].items() if isinstance(v, (int, float))]
    result = {k: statistics.median(pair[k] for pair in pairs) for k in fields}
    result["time_ratios"] = [pair["measured_s"] / pair["predicted_s"] for pair in pairs]
    result["rss_ratios"] = [pair["measured_rss"] / pair["predicted_rss"] for pair in pairs]
    result["time_ratio"], result["rss_ratio"] = (statistics.median(result[k]) for k in ("time_ratios", "rss_ratios"))
    result["pairs"] = pairs
    return result


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="runs to make (default: all)")
    parser.add_argument("--repeats", type=_positive, default=3, help="(prediction, run) pairs per row (default: 3)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = []
    print("| run | predicted s | measured s | ratio | pairs' ratios | sampling predicted / measured s | decode predicted / measured s | "
          "encoders predicted / measured s | predicted RSS MiB | measured RSS MiB | ratio | pairs' ratios | load avg before/after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.only or RUNS:
        load_before = os.getloadavg()[0]
        r = _median_run(name, args.repeats, context)
        r.update(name=name, load=(load_before, os.getloadavg()[0]))
        results.append(r)
        print(
            f"| {name} | {r['predicted_s']:.1f} | {r['measured_s']:.1f} | {r['time_ratio']:.2f} | "
            f"{_spread(r['time_ratios'])} | "
            f"{r['predicted_sampling_s']:.1f} / {r['measured_sampling_s']:.1f} | "
            f"{r['predicted_decode_s']:.1f} / {r['measured_decode_s']:.1f} | "
            f"{r['predicted_encoders_s']:.2f} / {r['measured_encoders_s']:.2f} | "
            f"{r['predicted_rss'] / 2**20:.0f} | {r['measured_rss'] / 2**20:.0f} | "
            f"{r['rss_ratio']:.2f} | {_spread(r['rss_ratios'])} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
