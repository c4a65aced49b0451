"""Resolution buckets: the (height, width) a video is generated at, chosen by aspect ratio.

At resolution 640 this is the official table and rule. Other resolutions follow kijai's
generalisation: pick the bucket at 640, then scale both sides by resolution / 640 and round
each to a multiple of 16 with Python's round (half to even). kijai iterates the table as a
Python set; we iterate it in the official list order, so ties (an aspect exactly halfway
between two buckets) resolve as in the official app: the later, taller bucket wins.
"""

from __future__ import annotations

from numbers import Integral

from ..errors import ConfigError, InputError

BASE_RESOLUTION = 640
# 3.2x the 640 the model was trained at: the widest bucket is then 1328 x 3072 px, 143k noisy
# image tokens per 9-frame section (10x the 640 bucket's, so about 100x its attention cost);
# a larger value is a typo that would only run out of memory.
MAX_RESOLUTION = 2048

# (height, width), in the official order (widest first).
BUCKETS_640: tuple[tuple[int, int], ...] = (
    (416, 960),
    (448, 864),
    (480, 832),
    (512, 768),
    (544, 704),
    (576, 672),
    (608, 640),
    (640, 608),
    (672, 576),
    (704, 544),
    (768, 512),
    (832, 480),
    (864, 448),
    (960, 416),
)


def find_bucket(height: int, width: int, resolution: int = BASE_RESOLUTION) -> tuple[int, int]:
    """The bucket (height, width) whose aspect is nearest to height x width.

    Nearness is |height * bucket_w - width * bucket_h| (cross-multiplied aspect, not area);
    with ``<=`` over the list the last of equally near buckets wins (square -> (640, 608)).
    """
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise InputError(f"image size must be two positive ints; got height={height!r}, width={width!r}")
    check_resolution(resolution)
    height, width = int(height), int(width)
    best_metric = float("inf")
    best = BUCKETS_640[0]
    for bucket_h, bucket_w in BUCKETS_640:
        metric = abs(height * bucket_w - width * bucket_h)
        if metric <= best_metric:
            best_metric = metric
            best = (bucket_h, bucket_w)
    if resolution == BASE_RESOLUTION:
        return best
    scale = resolution / BASE_RESOLUTION
    return round(best[0] * scale / 16) * 16, round(best[1] * scale / 16) * 16


def check_resolution(resolution: int) -> None:
    """Raise ConfigError unless resolution is a positive multiple of 16 (VAE x8, patch x2) up to MAX_RESOLUTION."""
    if not _is_int(resolution) or not 0 < resolution <= MAX_RESOLUTION or resolution % 16:
        raise ConfigError(
            f"resolution must be a positive multiple of 16 up to {MAX_RESOLUTION} (e.g. 320, 480, 640); got {resolution!r}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
