"""The cost model against whole pipeline runs on this CPU: predicted vs measured time and peak RSS.

    python -m benchmarks.cost_validation [--only NAME ...]

Each run is a fresh subprocess (its own peak RSS): build the pipeline (the tiny models, or
the tiny encoders and VAE with the "medium" transformer), time the device's rates at the
run's shapes (``framepack.cost.measure``: a few seconds, just before the run, so a busy
machine's load is in both), estimate, reset the peak RSS (``/proc/self/clear_refs``), then
time ``pipe.generate`` (one cold run, as ``framepack generate`` makes it).

Time: predicted ``CostEstimate.seconds.total`` (no load: the models are built in memory)
vs the wall time of ``generate``; target within +-25 %.
Peak RSS: predicted = RSS before the pipeline was built (the interpreter, torch, PyAV and
every module of ours a run imports: measured, not modelled) + the models' weight bytes + the largest phase's
activation estimate (``memory.planner.activation_estimates``); measured = VmHWM over the
generation; target within +-15 %.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _run(name: str, queue: multiprocessing.Queue) -> None:
    import torch

    import framepack.pipeline
    import framepack.video.mp4
    import framepack.video.preview_mp4  # noqa: F401
    from framepack import FramePackPipeline, GenerationConfig
    from framepack.cli import demo_image
    from framepack.components import tiny_components, tiny_configs
    from framepack.cost.estimate import estimate
    from framepack.cost.measure import measure_profile
    from framepack.cost.memory import ModelConfigs
    from framepack.cost.profiles import device_profile
    from framepack.cost.report import prompt_tokens
    from framepack.models.transformer import FramePackTransformer, TransformerConfig

    preset, resolution, steps, seconds, cache = RUNS[name]
    baseline = _status_kib("VmRSS") * 1024
    components = tiny_components(seed=0)
    if preset is not None:
        t = tiny_configs()["transformer"]
        config = TransformerConfig.preset(
            preset,
            text_embed_dim=t.text_embed_dim,
            pooled_projection_dim=t.pooled_projection_dim,
            image_proj_dim=t.image_proj_dim,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            components.transformer = FramePackTransformer(config).eval().requires_grad_(False)
    pipe = FramePackPipeline(components, device="cpu")
    config = GenerationConfig(seconds=seconds, steps=steps, resolution=resolution, cache=cache, seed=0)
    image = demo_image(resolution)
    models = ModelConfigs.of(components.modules(), preset or "tiny")
    text = prompt_tokens(pipe, PROMPT)

    def predict(profile):
        return estimate(
            config,
            profile,
            models=models,
            image_size=image.shape[:2],
            text_tokens=text,
            dtype=torch.float32,
            from_disk=False,
        )

    first = predict(device_profile("cpu"))
    tokens = first.shape.image_stream(models.transformer) + first.shape.context_stream()
    t = models.transformer
    profile = measure_profile(
        device_profile("cpu"),
        "cpu",
        dtype=torch.float32,
        width=t.inner_dim,
        heads=t.num_attention_heads,
        tokens=tokens,
        conv_channels=models.vae.block_out_channels[0],
        frame_size=first.bucket,
    )
    predicted = predict(profile)
    weights = sum(predicted.memory.weight_bytes.values())
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    started = time.perf_counter()
    pipe.generate(image, PROMPT, config)
    measured = time.perf_counter() - started
    s = predicted.seconds
    queue.put(
        dict(
            name=name,
            predicted_s=s.total,
            measured_s=measured,
            parts=dict(encoders=s.encoders, sampling=s.sampling, prepare=s.prepare, decode=s.decode),
            table_s=first.seconds.total,
            predicted_rss=baseline + weights + predicted.memory.peak_activation_bytes,
            measured_rss=_status_kib("VmHWM") * 1024,
            baseline_rss=baseline,
            rates=dict(
                matmul=profile.matmul_flops,
                attention=profile.attention_flops,
                conv=profile.conv_flops,
                bandwidth=profile.memory_bandwidth,
                overhead=profile.kernel_overhead_s,
            ),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="runs to make (default: all)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = []
    print("| run | predicted s | measured s | ratio | predicted RSS MiB | measured RSS MiB | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only or RUNS:
        queue = context.Queue()
        child = context.Process(target=_run, args=(name, queue))
        child.start()
        result = queue.get()
        child.join()
        results.append(result)
        r = result
        print(
            f"| {name} | {r['predicted_s']:.1f} | {r['measured_s']:.1f} | {r['measured_s'] / r['predicted_s']:.2f} | "
            f"{r['predicted_rss'] / 2**20:.0f} | {r['measured_rss'] / 2**20:.0f} | "
            f"{r['measured_rss'] / r['predicted_rss']:.2f} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
