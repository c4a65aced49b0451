"""Encoders vs transformers on CPU, float32, side by side (interleaved, median of 7 after warm-up).

Mid-sized random models in the real layouts (saved by transformers, loaded by us); the Llama
case runs FramePack's 351-token padded input on the reference and the valid prefix on ours,
exactly as encode_prompt does, plus the same padded input for a like-for-like figure.
Run: python -m benchmarks.encoders
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int = 7) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(title: str, result: dict[str, float], reference: str) -> None:
    parts = [
        f"{name} {seconds * 1000:.1f} ms ({result[reference] / seconds:.2f}x ref)" for name, seconds in result.items()
    ]
    print(f"{title}: " + "; ".join(parts))


def main() -> None:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlamaModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )  # fmt: skip

    from framepack.models.clip import CLIPTextEncoder
    from framepack.models.llama import LlamaTextEncoder
    from framepack.models.siglip import SiglipImageEncoder

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref_llama = LlamaModel(LlamaConfig(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                                           num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                                           vocab_size=4096, rope_theta=500000.0)).eval()  # fmt: skip
        ref_llama.save_pretrained(root / "llama")
        llama = LlamaTextEncoder.from_pretrained(root / "llama")
        ids = torch.randint(0, 4096, (1, 351))
        mask = torch.zeros(1, 351, dtype=torch.long)
        mask[:, :140] = 1
        result = median_seconds({
            "reference (padded 351)": lambda: ref_llama(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-3],
            "ours (valid 140)": lambda: llama(ids[:, :140], mask[:, :140]),
            "ours (padded 351)": lambda: llama(ids, mask),
        })  # fmt: skip
        report("Llama 8x1024 GQA, hidden_states[-3]", result, "reference (padded 351)")

        ref_clip = CLIPTextModel(CLIPTextConfig(eos_token_id=2)).eval()  # real CLIP-L text size
        ref_clip.save_pretrained(root / "clip")
        clip = CLIPTextEncoder.from_pretrained(root / "clip")
        clip_ids = torch.randint(0, 49406, (1, 77))
        result = median_seconds({"reference": lambda: ref_clip(input_ids=clip_ids).pooler_output,
                                 "ours": lambda: clip(clip_ids)})  # fmt: skip
        report("CLIP-L text, pooled, 77 tokens", result, "reference")

        ref_siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=576, intermediate_size=2152,
                                                          num_hidden_layers=6, num_attention_heads=8,
                                                          image_size=384, patch_size=14)).eval()  # fmt: skip
        ref_siglip.save_pretrained(root / "siglip")
        siglip = SiglipImageEncoder.from_pretrained(root / "siglip")
        pixels = torch.rand(1, 3, 384, 384) * 2 - 1
        result = median_seconds({"reference": lambda: ref_siglip(pixel_values=pixels).last_hidden_state,
                                 "ours": lambda: siglip(pixels)})  # fmt: skip
        report("SigLIP 6x576, 729 patches", result, "reference")


if __name__ == "__main__":
    main()
