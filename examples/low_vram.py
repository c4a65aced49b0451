"""Low memory: weights memory-mapped from the checkpoint files and transformer blocks streamed
to the GPU within a budget, so a 13B model runs on a 6-8 GB card and in little host RAM.

    python examples/low_vram.py --tiny                            # offline: streams on the CPU
    python examples/low_vram.py --image dancer.png                # real checkpoints, 6 GB budget
"""

from __future__ import annotations

from common import example_args, pipeline_and_image, resolution, steps

from framepack import GenerationConfig

BUDGET_GB = 6.0


def main() -> None:
    args = example_args("Low-VRAM generation with layer streaming.", "low_vram.mp4")
    pipe, image = pipeline_and_image(args, vram_budget_gb=BUDGET_GB, storage="mmap")
    if args.tiny:
        # Tiny blocks are kilobytes: a budget of a few blocks forces streaming even here.
        pipe.enable_streaming(budget_bytes=pipe.minimum_streaming_budget())
    print(pipe.memory_report())
    config = GenerationConfig(seconds=1.0 if args.tiny else 5.0, steps=steps(args), resolution=resolution(args))
    video = pipe.generate(image, args.prompt, config)
    print(f"wrote {video.save(args.out)}: {video.num_frames} frames")


if __name__ == "__main__":
    main()
