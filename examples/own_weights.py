"""The weights you already have: a ComfyUI models folder, fp8 blocks and LoRAs.

python examples/own_weights.py --tiny                                   # offline: tiny models, a random LoRA
python examples/own_weights.py --comfyui ~/ComfyUI/models --image in.png --lora style.safetensors:0.8
"""

from __future__ import annotations

import argparse
import math

import torch
from common import TINY_RESOLUTION, example_args, steps

from framepack import FramePackPipeline, GenerationConfig
from framepack.cli import demo_image

TINY_RANK = 4


def more_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--comfyui", help="a ComfyUI models folder (diffusion_models/, text_encoders/, clip_vision/, vae/)"
    )
    parser.add_argument("--lora", action="append", default=[], help="LoRA file, optionally :STRENGTH (repeatable)")


def tiny_musubi_lora(dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA on the first double block's q and k, spelled as musubi-tuner writes FramePack LoRAs."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in ("transformer_blocks_0_attn_to_q", "transformer_blocks_0_attn_to_k"):
        tensors[f"lora_unet_{layer}.lora_down.weight"] = torch.randn(TINY_RANK, dim, generator=g) / dim**0.5
        tensors[f"lora_unet_{layer}.lora_up.weight"] = torch.randn(dim, TINY_RANK, generator=g)
        tensors[f"lora_unet_{layer}.alpha"] = torch.tensor(float(TINY_RANK))
    return tensors


def main() -> None:
    args = example_args("Generate from a ComfyUI folder with fp8 blocks and LoRAs.", "own_weights.mp4", more_arguments)
    if args.tiny:
        pipe, image = FramePackPipeline.tiny(seed=0), args.image or demo_image(TINY_RESOLUTION)
        transformer = pipe.components.transformer
        transformer.quantize_fp8(block=math.gcd(64, transformer.config.inner_dim))  # the real model uses 64
        pipe.add_lora(tiny_musubi_lora(transformer.config.inner_dim), 0.8, name="tiny-style")
    else:
        if args.comfyui is None or args.image is None:
            raise SystemExit("--comfyui and --image are required without --tiny")
        loras = [(path, float(strength or 1)) for path, _, strength in (spec.partition(":") for spec in args.lora)]
        pipe = FramePackPipeline.from_comfyui(args.comfyui, weights="fp8", loras=loras)
        image = args.image
    for lora in pipe.components.transformer.loras():
        print(f"LoRA {lora.name}: {lora.format}, strength {lora.strength}, sha256 {lora.digest[:12]}")
    config = GenerationConfig(
        seconds=1.0 if args.tiny else 5.0, steps=steps(args), resolution=TINY_RESOLUTION if args.tiny else 640
    )
    video = pipe.generate(image, args.prompt, config)
    print(f"wrote {video.save(args.out)}: {video.num_frames} frames")


if __name__ == "__main__":
    main()
