"""Start and end image: the first generated section (the video's end) is conditioned on the end frame.

python examples/end_frame.py --tiny
python examples/end_frame.py --image start.png --end-image end.png
"""

from __future__ import annotations

from common import TINY_RESOLUTION, example_args, pipeline_and_image, resolution, steps

from framepack import GenerationConfig
from framepack.cli import demo_image


def main() -> None:
    args = example_args(
        "Start and end frame (inverted sections).",
        "end_frame.mp4",
        lambda parser: parser.add_argument("--end-image", help="last frame (default with --tiny: the pattern flipped)"),
    )
    pipe, image = pipeline_and_image(args)
    end_image = args.end_image
    if end_image is None:
        end_image = demo_image(TINY_RESOLUTION)[::-1].copy()  # the pattern upside down
    config = GenerationConfig(
        seconds=1.0 if args.tiny else 5.0,
        steps=steps(args),
        resolution=resolution(args),
        mode="inverted",
    )
    video = pipe.generate(image, args.prompt, config, end_image=end_image)
    print(f"wrote {video.save(args.out)}: {video.num_frames} frames")


if __name__ == "__main__":
    main()
