"""FramePack-F1: forward sections, each finished section shown as it arrives.

python examples/forward_f1.py --tiny
python examples/forward_f1.py --image dancer.png              # loads lllyasviel/FramePack_F1_I2V_HY_20250503
"""

from __future__ import annotations

from common import example_args, pipeline_and_image, resolution, steps

from framepack import F1_REPO, GenerationConfig


def main() -> None:
    args = example_args("Forward (F1) sections, streamed.", "forward_f1.mp4")
    pipe, image = pipeline_and_image(args, transformer=F1_REPO)
    config = GenerationConfig(
        seconds=2.0 if args.tiny else 5.0, steps=steps(args), resolution=resolution(args), mode="forward"
    )
    run = pipe.stream(image, args.prompt, config)
    for section in run:
        print(f"section {section.index + 1}/{section.num_sections} in {section.seconds:.1f}s: "
              f"{section.video_frames} frames, preview {section.preview}")  # fmt: skip
    print(f"wrote {run.result().save(args.out)}")


if __name__ == "__main__":
    main()
