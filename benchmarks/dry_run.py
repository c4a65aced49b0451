"""Planned vs dry-run device memory of the real model, per phase, without a GPU.

    python -m benchmarks.dry_run [--budgets 6 8 12 24] [--dtypes bf16 fp16] [--resolution 640]

Every component is built at its real size (FramePackI2V_HY transformer, llava-llama-3-8b,
CLIP-L, SigLIP so400m, HunyuanVideo VAE) with fake weights (``framepack.dry_run``: shapes,
no memory), placed by the memory plan for each budget on a claimed ``cuda`` device, and
run through one whole generation (one section, one step) at the 640 bucket's largest
frame (416 x 960). Printed per phase: the plan's device bytes; the phase's own peak as the
dry run measured it (device storages alive at once, above what was alive when the phase
began: its weights and activations); their ratio; the device peak during the phase
(components kept from earlier phases included) and the room the budget leaves after the
reserve. The plan must not be below the phase's own peak, should be within 15 % of it plus
the reserve, and the device peak must stay within the room.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from framepack.components import Components
from framepack.config import GenerationConfig
from framepack.dry_run import CudaDryRun
from framepack.models.clip import CLIPTextConfig, CLIPTextEncoder
from framepack.models.llama import LlamaConfig, LlamaTextEncoder
from framepack.models.siglip import SiglipImageEncoder, SiglipVisionConfig
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.models.vae import HunyuanVideoVAE, VAEConfig
from framepack.pipeline import FramePackPipeline
from framepack.tiny import tiny_clip_tokenizer, tiny_llama_tokenizer
from framepack.units import format_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def real_size_components(dry: CudaDryRun, dtype: torch.dtype) -> Components:
    """The real models with fake host weights; the tokenizers are the tiny offline ones
    (same special ids: the token count of a short prompt is what matters here)."""
    with torch.device("meta"):
        models = dict(
            transformer=FramePackTransformer(TransformerConfig.preset("framepack")).to(dtype),
            vae=HunyuanVideoVAE(VAEConfig.preset("hunyuan")).to(torch.float16),
            text_encoder=LlamaTextEncoder(LlamaConfig.preset("llava-llama-3-8b")).to(torch.float16),
            text_encoder_2=CLIPTextEncoder(CLIPTextConfig.preset("clip-vit-large-patch14")).to(torch.float16),
            image_encoder=SiglipImageEncoder(SiglipVisionConfig.preset("siglip-so400m-patch14-384")).to(torch.float16),
        )
    for model in models.values():
        model.eval().requires_grad_(False)
        dry.fake_weights(model)
    return Components(**models, tokenizer=tiny_llama_tokenizer(), tokenizer_2=tiny_clip_tokenizer())


def run(budget_gib: float, dtype: torch.dtype, resolution: int, card_gib: float) -> dict[str, object]:
    """One generation in a dry run; the plan's and the measured bytes per phase."""
    image = np.full((416, 960, 3), 128, np.uint8)  # the largest frame of the 640 buckets
    config = GenerationConfig(seconds=1.0, steps=1, resolution=resolution, seed=0)
    with CudaDryRun(total_gib=card_gib, bf16=dtype == torch.bfloat16) as dry:
        pipe = FramePackPipeline(real_size_components(dry, dtype), device="cuda")
        plan = pipe.set_vram_budget(budget_gib, resolution=resolution, window=config.window)
        with dry.pipeline_phases(pipe):
            syncs_before = dry.syncs()
            started = time.perf_counter()
            pipe.generate(image, "a man dances", config)
        return dict(
            plan=plan,
            measured=dict(dry.counters.phase_peaks),
            own=dict(dry.counters.phase_own_peaks),
            syncs=dry.syncs() - syncs_before,
            pinned=dry.counters.pinned_bytes,
            seconds=time.perf_counter() - started,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[6, 8, 12, 24])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=sorted(DTYPES))
    parser.add_argument("--resolution", type=int, default=640)
    args = parser.parse_args()
    print("| budget | dtype | phase | planned | dry run: phase's own peak | planned / own | device peak | room |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.dtypes:
        for budget in args.budgets:
            result = run(budget, DTYPES[name], args.resolution, card_gib=budget)
            plan = result["plan"]
            room = plan.budget_bytes - plan.reserve_bytes
            for phase, planned in plan.phase_device_bytes.items():
                own, peak = result["own"].get(phase, 0), result["measured"].get(phase, 0)
                print(
                    f"| {budget:g} GiB | {name} | {phase} | {format_bytes(planned)} | {format_bytes(own)} | "
                    f"{planned / own:.3f} | {format_bytes(peak)} | {format_bytes(room)} |"
                )
            print(
                f"<!-- {name} {budget:g} GiB: {result['syncs']} syncs, pinned {format_bytes(result['pinned'])}, "
                f"{result['seconds']:.0f} s -->",
                flush=True,
            )


if __name__ == "__main__":
    main()
