"""A table of estimates over a grid of settings: ``framepack plan --compare resolution=640,480 steps=25,15``."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence

from ..config import GenerationConfig
from ..errors import ConfigError
from ..units import format_bytes
from .estimate import CostEstimate, format_seconds

# The settings a comparison may vary: the GenerationConfig field each sets and how its text reads.
AXES: dict[str, tuple[str, Callable[[str], object]]] = {
    "resolution": ("resolution", int),
    "steps": ("steps", int),
    "cache": ("cache", str),
    "seconds": ("seconds", float),
    "window": ("window", int),
    "real_cfg": ("real_cfg", float),
}


def parse_axes(specs: Sequence[str]) -> dict[str, list[object]]:
    """``["resolution=640,480", "cache=none,teacache"]`` -> {"resolution": [640, 480], "cache": ["none", "teacache"]}."""
    axes: dict[str, list[object]] = {}
    for spec in specs:
        name, equals, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or not values.strip():
            raise ConfigError(f"--compare {spec!r}: expected NAME=V1,V2,... with NAME one of {', '.join(AXES)}")
        if name not in AXES:
            raise ConfigError(f"--compare {spec!r}: unknown setting {name!r}; choose from {', '.join(AXES)}")
        if name in axes:
            raise ConfigError(f"--compare: {name!r} is given twice")
        convert = AXES[name][1]
        try:
            axes[name] = [convert(v.strip()) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--compare {spec!r}: {values!r} are not all {convert.__name__} values") from None
    return axes


def combinations(
    base: GenerationConfig, axes: Mapping[str, Sequence[object]]
) -> list[tuple[dict[str, object], GenerationConfig]]:
    """(the settings varied, the config) for every combination of ``axes`` on ``base``."""
    names = list(axes)
    rows = []
    for values in itertools.product(*(axes[n] for n in names)):
        settings = dict(zip(names, values))
        rows.append((settings, dataclasses.replace(base, **{AXES[n][0]: v for n, v in settings.items()})))
    return rows


def compare(
    base: GenerationConfig, axes: Mapping[str, Sequence[object]], run: Callable[[GenerationConfig], CostEstimate]
) -> list[tuple[dict[str, object], CostEstimate]]:
    """``run`` (an ``estimate`` with everything else fixed) for every combination of ``axes`` on ``base``."""
    return [(settings, run(config)) for settings, config in combinations(base, axes)]


def format_table(rows: list[tuple[dict[str, object], CostEstimate]], *, device_memory: bool) -> str:
    """A markdown table: the varied settings, then time, time per video second, FLOPs and peak memory."""
    names = list(rows[0][0]) if rows else []
    memory = "peak device memory" if device_memory else "peak host RAM beside the weights"
    head = [*names, "predicted time", "per video second", "PFLOP", memory]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for settings, e in rows:
        m = e.memory
        peak = m.peak_device_bytes if device_memory else m.host_activation_bytes
        cells = [str(settings[n]) for n in names] + [
            format_seconds(e.seconds.total),
            format_seconds(e.seconds.total / e.plan.seconds),
            f"{e.video_flops / 1e15:.3g}",
            format_bytes(peak),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
