"""What every example shares: its command line and how it gets a pipeline."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from framepack import FramePackPipeline
from framepack.cli import demo_image

TINY_RESOLUTION = 128


def example_args(
    description: str, default_out: str, more: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if more is not None:
        more(parser)
    parser.add_argument("--tiny", action="store_true", help="tiny random models, offline (the video is noise)")
    parser.add_argument("--image", help="start image (default with --tiny: a test pattern)")
    parser.add_argument("--prompt", default="The man dances energetically, leaping mid-air with fluid arm swings.")
    parser.add_argument("--out", default=default_out)
    return parser.parse_args()


def pipeline_and_image(args: argparse.Namespace, *, transformer: str | None = None, **load: object):
    """The tiny pipeline and a test pattern with ``--tiny``; else the official checkpoints and ``--image``."""
    if args.tiny:
        return FramePackPipeline.tiny(seed=0), args.image or demo_image(TINY_RESOLUTION)
    if args.image is None:
        raise SystemExit("--image is required without --tiny")
    kwargs = dict(load)
    if transformer is not None:
        kwargs["transformer"] = transformer
    return FramePackPipeline.from_pretrained(**kwargs), args.image


def resolution(args: argparse.Namespace) -> int:
    return TINY_RESOLUTION if args.tiny else 640


def steps(args: argparse.Namespace) -> int:
    return 6 if args.tiny else 25
