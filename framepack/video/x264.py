"""libx264 options from a crf: the one place that knows x264's quality range.

crf 0 is the one exception. x264 treats crf 0 (any crf < 1) as lossless, and lossless H.264
exists only in the "High 4:4:4 Predictive" profile, which browsers, QuickTime and most
hardware decoders refuse, even with yuv420p. So crf 0 asks x264 for constant quantizer 1 in
the High profile instead: the best quality a widely playable stream has. Nothing is lost by
it that mattered: the RGB -> yuv420p conversion already discards more than quantizer 1 does.

The encoder writes a hidden temporary file beside the target, renamed over it only when the
video is complete (``framepack.atomic``): a full disk or an error never leaves a truncated
video at the path, nor costs the file that was there.
"""

from __future__ import annotations

from numbers import Integral

from ..errors import ConfigError

MAX_CRF = 51  # x264 clamps anything above to 51


def encoder_options(crf: int) -> dict[str, str]:
    """libx264 options for an integer crf in [0, 51]; crf 0 becomes High-profile quantizer 1 (module doc)."""
    if isinstance(crf, bool) or not isinstance(crf, Integral) or not 0 <= crf <= MAX_CRF:
        raise ConfigError(f"crf must be an integer from 0 (best) to {MAX_CRF} (x264's range); got {crf!r}")
    if crf == 0:
        return {"qp": "1", "profile": "high"}
    return {"crf": str(int(crf))}
