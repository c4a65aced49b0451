"""Keyframes: images that stand in the inverted loop's start-frame context slot, section by section.

A keyframe is named by a key: an ``int`` is a section index in *video* order (0 = the video's
first section), a ``float`` is seconds of video time, held by the section whose frames are
shown then: section k holds ``[plan.section_start_seconds(k), plan.section_start_seconds(k + 1))``
(0 s, then (4·k·window + 1) / fps: 1.23 s, 2.43 s, ... at window 9 and 30 fps). Prompt schedules
differ: their times snap to the nearest section start. The last section holds the rest of the
video, up to its last frame or the length asked for, whichever is later (``plan.latest_time``,
as prompt schedules accept times).

Which keyframe a section sees follows FramePack-eichi: a section with a keyframe of its own gets
it; a section without one gets the nearest keyframe later in the video; the sections after the
last keyframe keep the start image. The inverted loop generates the video's end first, so each
section is pulled toward the next image the video is heading to.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .sampling.sections import SectionPlan

KeyframeKey = int | float

# Seconds that land on a section's start up to float error (37 / 30 written as 1.2333333333)
# belong to the section that starts there.
_BOUNDARY_TOLERANCE = 1e-9


def describe_key(key: object) -> str:
    """A key as the user wrote it: ``3`` (a section) or ``2.5s`` (seconds)."""
    if isinstance(key, numbers.Real) and not isinstance(key, (bool, numbers.Integral)):
        return f"{float(key):g}s"
    return repr(key)


def section_span(section: int, plan: SectionPlan) -> tuple[float, float]:
    """The seconds of video time that ``section`` (in video order) holds, as keys in seconds map."""
    end = plan.latest_time if section == plan.num_sections - 1 else plan.section_start_seconds(section + 1)
    return plan.section_start_seconds(section), end


def keyframe_section(key: object, plan: SectionPlan) -> int:
    """The video section (0 = the video's first) a keyframe ``key`` names; ConfigError if none."""
    count = plan.num_sections
    if isinstance(key, bool) or not isinstance(key, numbers.Real):
        raise ConfigError(
            f"keyframes: expected keys that are a section index (int) or seconds of video (float), "
            f"got {key!r} ({type(key).__name__})"
        )
    if isinstance(key, numbers.Integral):
        if not 0 <= key < count:
            raise ConfigError(
                f"keyframes: section {key} is not in the video: its {count} section(s) are 0 to {count - 1}"
            )
        return int(key)
    seconds = float(key)
    length = plan.latest_time
    if not (math.isfinite(seconds) and 0.0 <= seconds < length):
        raise ConfigError(
            f"keyframes: {describe_key(key)} is not in the video: times are from 0 s up to its length, {length:g} s"
        )
    starts = [plan.section_start_seconds(k) for k in range(count)]
    return bisect.bisect_right(starts, seconds + _BOUNDARY_TOLERANCE) - 1


def keyframe_sections(keys: Sequence[object], plan: SectionPlan) -> list[int]:
    """The video section of each key, in order; ConfigError if one is not in the video or two name one section."""
    sections = [keyframe_section(key, plan) for key in keys]
    for later, section in enumerate(sections):
        earlier = sections.index(section)
        if earlier != later:
            start, end = section_span(section, plan)
            raise ConfigError(
                f"keyframes: {describe_key(keys[earlier])} and {describe_key(keys[later])} both name "
                f"section {section} ({start:.2f} s to {end:.2f} s); give one image per section"
            )
    return sections


def keyframe_coverage(sections: Sequence[int], num_sections: int) -> tuple[int | None, ...]:
    """Per video section, the keyframe in its start-frame slot: an index into ``sorted(sections)``,
    the nearest keyframe at this section or later, or None (the start image) after the last one."""
    ordered = sorted(sections)
    coverage: list[int | None] = []
    next_keyframe = 0
    for section in range(num_sections):
        while next_keyframe < len(ordered) and ordered[next_keyframe] < section:
            next_keyframe += 1
        coverage.append(next_keyframe if next_keyframe < len(ordered) else None)
    return tuple(coverage)


def check_keyframes(keyframes: Mapping[Any, Any] | None, plan: SectionPlan) -> dict[int, Any]:
    """Video section -> key for ``keyframes`` of a video of ``plan``; ConfigError naming what is wrong."""
    if keyframes is None:
        return {}
    if not isinstance(keyframes, Mapping):
        raise ConfigError(
            f"keyframes: expected a dict {{section index or seconds: image}}, got {type(keyframes).__name__}"
        )
    if keyframes and plan.mode != "inverted":
        raise ConfigError(
            f"keyframes: only the 'inverted' mode takes keyframes, got mode {plan.mode!r}: the inverted loop "
            "generates the video from its end back, so a section is made after the keyframe it leads to; "
            "the forward (F1) loop makes each section before what follows it"
        )
    keys = list(keyframes)
    return dict(zip(keyframe_sections(keys, plan), keys))
