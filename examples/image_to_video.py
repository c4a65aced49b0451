"""Image to video with the original FramePack model (inverted, anti-drifting sections).

python examples/image_to_video.py --tiny                      # offline, tiny random models
python examples/image_to_video.py --image dancer.png          # the real checkpoints
"""

from __future__ import annotations

from common import example_args, pipeline_and_image, resolution, steps

from framepack import GenerationConfig
from framepack.cache import TeaCache


def main() -> None:
    args = example_args("Image to video (inverted sections).", "image_to_video.mp4")
    pipe, image = pipeline_and_image(args)
    config = GenerationConfig(
        seconds=1.0 if args.tiny else 5.0,
        steps=steps(args),
        resolution=resolution(args),
        mode="inverted",
        cache=TeaCache(0.15),
    )
    video = pipe.generate(image, args.prompt, config)
    print(f"wrote {video.save(args.out)}: {video.num_frames} frames")


if __name__ == "__main__":
    main()
