"""Low memory: weights memory-mapped from the checkpoint files, and one budget that decides
which transformer and Llama blocks stream to the GPU, when components swap and whether the
VAE tiles, so the 13B model runs on a 6-8 GB card and in little host RAM.

    python examples/low_vram.py --tiny                            # offline: streams on the CPU
    python examples/low_vram.py --image dancer.png                # real checkpoints, 6 GB budget
"""

from __future__ import annotations

from common import example_args, pipeline_and_image, resolution, steps

from framepack import GenerationConfig
from framepack.memory.streamer import minimum_budget

BUDGET_GB = 6.0


def main() -> None:
    args = example_args("Low-VRAM generation with layer streaming.", "low_vram.mp4")
    pipe, image = pipeline_and_image(args, vram_budget_gb=BUDGET_GB, storage="mmap")
    if args.tiny:
        # The tiny blocks are kilobytes, far below any real budget: stream them explicitly
        # within the smallest block budget, two blocks in flight, the rest on the host.
        transformer = pipe.components.transformer
        transformer.enable_streaming("cpu", minimum_budget(list(transformer.streaming_sizes().block_bytes)))
    print(pipe.memory_report())
    config = GenerationConfig(seconds=1.0 if args.tiny else 5.0, steps=steps(args), resolution=resolution(args))
    video = pipe.generate(image, args.prompt, config)
    print(pipe.memory_report())
    print(f"wrote {video.save(args.out)}: {video.num_frames} frames")


if __name__ == "__main__":
    main()
