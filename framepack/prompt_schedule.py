"""Prompt schedules: a prompt per span of the video, mapped onto its sections.

The string form, as FramePack-Studio writes it::

    [0s-2s: a man waves] [2s: he starts to dance]

A string is a schedule when its first non-space characters are ``[`` and a time in seconds
(``[0s``, ``[ 2.5s``); all of it must then be ``[START: text]`` or ``[START-END: text]`` groups
separated by white space, and anything else is a ConfigError naming the part. Any other
string (``"[cinematic] a man walks"``) is a plain prompt, used as given.

Mapping onto a ``SectionPlan`` (``resolve_prompt``): video section k starts at
``plan.section_start_seconds(k)``, the time of its first frame in the finished video whatever
the generation order (0 s, then (4·k·window + 1) / fps: 1.23 s, 2.43 s, ... at window 9 and
30 fps), and every time snaps to the nearest section start (half way rounds up; the video's
end counts as a start for entry ends). Keyframes differ: a keyframe time goes to the section
that holds it (``keyframes.py``). A section gets the
entry whose snapped ``[start, end)`` holds its start; an entry without an end lasts until the
next one (the last one to the video's end). Every section must get exactly one entry: a
schedule that does not start at 0 s, that leaves a gap, whose entries overlap or snap onto one
section, or that names a time past the video's end is a ConfigError naming the entry.

Blending (``blend_sections = B``): where the prompt changes, the B sections from the new
entry's start move from the old prompt to the new one in equal steps (weights
1/(B+1) … B/(B+1)); the next section has the new prompt alone. A blend stops where the next
entry starts.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ConfigError, InputError
from .sampling.control import TextBlend
from .sampling.sections import SectionPlan

# The start of a schedule: "[" and a time in seconds ("[2s", "[ 1.5s-", "[0s:").
_SCHEDULE_START = re.compile(r"\s*\[\s*\d+(?:\.\d+)?s(?![A-Za-z])")
_HEAD = re.compile(r"\s*(\d+(?:\.\d+)?)s\s*(?:-\s*(\d+(?:\.\d+)?)s\s*)?")
MAX_BLEND_SECTIONS = 1000
_SNAP_TOLERANCE = 1e-9  # a time written on a half-way point (up to float error) rounds up


@dataclass(frozen=True)
class ScheduleEntry:
    """One prompt from ``start`` seconds of the video to ``end`` (None: until the next entry or the end)."""

    start: float
    text: str
    end: float | None = None

    def __str__(self) -> str:
        span = _seconds(self.start) + ("" if self.end is None else "-" + _seconds(self.end))
        return f"[{span}: {self.text}]"

    def short(self, limit: int = 48) -> str:
        """The entry as written in the string form, cut to ``limit`` characters for messages."""
        text = str(self)
        return text if len(text) <= limit else text[: limit - 4] + "...]"


class PromptSchedule:
    """Prompts by video time: ``PromptSchedule([(0.0, "a man waves"), (2.0, "he starts to dance")])``.

    Entries are ``(start, text)``, ``(start, end, text)`` or ``ScheduleEntry``; times in seconds of
    the finished video. ``blend_sections``: sections over which a prompt change is blended (0: a cut).
    Checks that need no plan happen here (ConfigError); the rest in ``resolve``.
    """

    def __init__(
        self,
        entries: Iterable[ScheduleEntry | tuple[float, str] | tuple[float, float | None, str]],
        blend_sections: int = 0,
    ) -> None:
        if isinstance(entries, str):
            raise ConfigError("PromptSchedule: expected (start, text) entries, got a str (see parse_prompt_schedule)")
        given = [_entry(e) for e in entries]
        if not given:
            raise ConfigError("prompt schedule: expected at least one entry, got none")
        if isinstance(blend_sections, bool) or not isinstance(blend_sections, int):
            raise ConfigError(f"blend_sections: expected an int, got {type(blend_sections).__name__}")
        if not 0 <= blend_sections <= MAX_BLEND_SECTIONS:
            raise ConfigError(f"blend_sections: expected 0 to {MAX_BLEND_SECTIONS} sections, got {blend_sections}")
        ordered = sorted(given, key=lambda e: e.start)
        for before, after in itertools.pairwise(ordered):
            if before.start == after.start:
                raise ConfigError(f"prompt schedule: {before.short()} and {after.short()} start at the same time")
            if before.end is not None and before.end > after.start:
                raise ConfigError(
                    f"prompt schedule: {before.short()} overlaps {after.short()}: it ends after the next one starts"
                )
        self.entries: tuple[ScheduleEntry, ...] = tuple(ordered)
        self.blend_sections = blend_sections

    @property
    def prompts(self) -> tuple[str, ...]:
        """The distinct prompt texts, in video order."""
        return tuple(dict.fromkeys(e.text for e in self.entries))

    def __str__(self) -> str:
        """The canonical string form (``parse_prompt_schedule`` reads it back; the blend is not in it)."""
        return " ".join(str(e) for e in self.entries)

    def __repr__(self) -> str:
        return f"PromptSchedule({str(self)!r}, blend_sections={self.blend_sections})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptSchedule):
            return NotImplemented
        return (self.entries, self.blend_sections) == (other.entries, other.blend_sections)

    def __hash__(self) -> int:
        return hash((self.entries, self.blend_sections))

    def resolve(self, plan: SectionPlan) -> SectionPrompts:
        """Each video section's prompt (a ``TextBlend`` into ``prompts``); ConfigError naming the entry
        when the schedule does not fit ``plan``."""
        prompts = self.prompts
        index = {text: i for i, text in enumerate(prompts)}
        blends: list[TextBlend] = []
        for i, (entry, (start, end)) in enumerate(zip(self.entries, self._spans(plan))):
            previous = index[self.entries[i - 1].text] if i else None
            for k in range(start, end):
                step_in = k - start + 1
                if previous is None or previous == index[entry.text] or step_in > self.blend_sections:
                    blends.append(TextBlend(index[entry.text]))
                else:  # the blend moves from the previous prompt toward this one
                    weight = step_in / (self.blend_sections + 1)
                    blends.append(TextBlend(previous, index[entry.text], weight))
        return SectionPrompts(prompts, tuple(blends))

    def _spans(self, plan: SectionPlan) -> list[tuple[int, int]]:
        """Each entry's video sections [start, end), snapped; ConfigError unless they cover every
        section once and name no time past the video's end."""
        n = plan.num_sections
        at = plan.section_start_seconds
        length = plan.latest_time
        starts = [_snap(e.start, plan) for e in self.entries]
        for entry, start in zip(self.entries, starts):
            for time in (entry.start, entry.end):
                if time is not None and time > length + _SNAP_TOLERANCE:
                    raise ConfigError(
                        f"prompt schedule: {entry.short()} names {_seconds(time)}, past the end of the "
                        f"{length:.2f} s video"
                    )
            if start >= n:
                raise ConfigError(
                    f"prompt schedule: {entry.short()} starts at {_seconds(entry.start)}, nearer the video's end "
                    f"({at(n):.2f} s) than its last section's start ({at(n - 1):.2f} s)"
                )
        for (before, s0), (after, s1) in itertools.pairwise(zip(self.entries, starts)):
            if s0 == s1:
                raise ConfigError(
                    f"prompt schedule: {before.short()} and {after.short()} both snap to section {s0} "
                    f"({at(s0):.2f} s); a section has one prompt: start them a section apart "
                    f"(the next section starts at {at(s0 + 1):.2f} s)"
                )
        ends = []
        for i, entry in enumerate(self.entries):
            if entry.end is not None:
                end = _snap(entry.end, plan)
            else:  # until the next entry, the last one to the video's end
                end = starts[i + 1] if i + 1 < len(starts) else n
            ends.append(min(max(end, starts[i] + 1), n))  # an entry keeps at least its first section
        if starts[0] > 0:
            raise ConfigError(
                f"prompt schedule: the first entry {self.entries[0].short()} starts at section {starts[0]} "
                f"({at(starts[0]):.2f} s), so the sections before it have no prompt; begin with [0s: ...]"
            )
        for i, (end, following) in enumerate(zip(ends, starts[1:])):
            if end < following:
                raise ConfigError(
                    f"prompt schedule: no prompt for {at(end):.2f} s to {at(following):.2f} s, between "
                    f"{self.entries[i].short()} and {self.entries[i + 1].short()}"
                )
        if ends[-1] < n:
            raise ConfigError(
                f"prompt schedule: no prompt after {at(ends[-1]):.2f} s: the last entry "
                f"{self.entries[-1].short()} ends before the video's last section ({at(n - 1):.2f} s); "
                "leave its end out to last to the end"
            )
        return list(zip(starts, ends))


@dataclass(frozen=True)
class SectionPrompts:
    """The prompts of one video and, per video section (0 = the video's first), which it gets."""

    prompts: tuple[str, ...]
    blends: tuple[TextBlend, ...]

    @property
    def uniform(self) -> bool:
        """One prompt, unblended, for every section: conditioned exactly as a plain prompt."""
        return len(self.prompts) == 1

    def key(self) -> str:
        """What a run's fingerprint digests: a uniform prompt is its own text (as a plain prompt's
        always was, so runs saved before schedules resume); otherwise every section's blend."""
        if self.uniform:
            return self.prompts[0]
        sections = [[b.first, b.second, b.weight] for b in self.blends]
        return json.dumps({"prompts": list(self.prompts), "sections": sections}, ensure_ascii=False)

    def describe(self, text: TextBlend, limit: int = 60) -> str:
        """One section's prompt for people: the text, or the blend of two."""
        first = _cut(self.prompts[text.first], limit)
        if text.weight == 0.0:
            return first
        second = _cut(self.prompts[text.second], limit)
        return f"{1 - text.weight:.0%} {first} + {text.weight:.0%} {second}"


def describe_section_prompts(sections: SectionPrompts, plan: SectionPlan) -> list[str]:
    """One line per section, in video order, with its time, its place in the generation order and its prompt."""
    order = "last to first" if plan.mode == "inverted" else "first to last"
    lines = [f"prompts by video section (generated {order}):"]
    for layout in plan.in_video_order():
        k = layout.video_index
        lines.append(
            f"  video section {k} ({plan.section_start_seconds(k):.2f} s, generated {layout.index + 1} of {plan.num_sections}): "
            f"{sections.describe(sections.blends[k])}"
        )
    return lines


def looks_like_schedule(text: str) -> bool:
    """Whether ``text`` is in the schedule form: it starts with ``[`` and a time in seconds."""
    return _SCHEDULE_START.match(text) is not None


def parse_prompt_schedule(text: str, *, blend_sections: int = 0) -> PromptSchedule:
    """``"[0s-2s: a man waves] [2s: he starts to dance]"`` -> a PromptSchedule; ConfigError naming the
    offending part (with its character position) for anything else."""
    if not isinstance(text, str):
        raise ConfigError(f"prompt schedule: expected a str, got {type(text).__name__}")
    entries, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            break
        if text[i] != "[":
            raise ConfigError(
                f"prompt schedule: {_cut(text[i:], 24)} at character {i} is outside any [TIME: text] group"
            )
        close = text.find("]", i)
        if close < 0:
            raise ConfigError(f"prompt schedule: the group {_cut(text[i:], 24)} at character {i} has no closing ']'")
        entries.append(_group(text[i + 1 : close], text[i : close + 1], i))
        i = close + 1
    if not entries:
        raise ConfigError("prompt schedule: expected [TIME: text] groups, got none")
    return PromptSchedule(entries, blend_sections=blend_sections)


def as_prompt(prompt: str | PromptSchedule) -> str | PromptSchedule:
    """A schedule as given, a string in the schedule form parsed, any other string as a plain prompt."""
    if isinstance(prompt, PromptSchedule):
        return prompt
    if not isinstance(prompt, str):
        raise InputError(f"prompt: expected a str or a PromptSchedule, got {type(prompt).__name__}")
    return parse_prompt_schedule(prompt) if looks_like_schedule(prompt) else prompt


def resolve_prompt(prompt: str | PromptSchedule, plan: SectionPlan) -> SectionPrompts:
    """Each video section's prompt, for a plain prompt (the same everywhere) or a schedule."""
    prompt = as_prompt(prompt)
    if isinstance(prompt, str):
        return SectionPrompts((prompt,), (TextBlend(0),) * plan.num_sections)
    return prompt.resolve(plan)


def _group(inside: str, whole: str, at: int) -> ScheduleEntry:
    where = f"{_cut(whole)} at character {at}"
    if "[" in inside:
        raise ConfigError(f"prompt schedule: {where} holds a '['; groups do not nest and texts hold no brackets")
    head, colon, body = inside.partition(":")
    if not colon:
        raise ConfigError(f"prompt schedule: {where}: expected [TIME: text] or [START-END: text], no ':' found")
    times = _HEAD.fullmatch(head)
    if times is None:
        raise ConfigError(
            f"prompt schedule: {where}: expected a time like 2s or 1.5s, or a span like 0s-2s, before ':', "
            f"got {head.strip()!r}"
        )
    start, end = float(times.group(1)), times.group(2)
    if not body.strip():
        raise ConfigError(f"prompt schedule: {where} has no prompt text")
    return _entry((start, None if end is None else float(end), body.strip()), where)


def _entry(value: object, where: str | None = None) -> ScheduleEntry:
    """One entry, checked; ``where`` names it in errors (default: its repr)."""
    where = repr(value) if where is None else where
    if isinstance(value, ScheduleEntry):
        start, end, text = value.start, value.end, value.text
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (2, 3):
        start, end, text = (value[0], None, value[1]) if len(value) == 2 else tuple(value)
    else:
        raise ConfigError(f"prompt schedule: expected an entry (start, text) or (start, end, text), got {value!r}")
    for name, time in (("start", start), ("end", end)):
        if time is None and name == "end":
            continue
        if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time) or time < 0:
            raise ConfigError(f"prompt schedule: {where}: expected a {name} time in seconds >= 0, got {time!r}")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"prompt schedule: {where}: expected a non-empty prompt text, got {text!r}")
    if "[" in text or "]" in text:  # the string form could not hold it
        raise ConfigError(f"prompt schedule: {where}: a scheduled prompt holds no '[' or ']', got {text!r}")
    if end is not None and end <= start:
        raise ConfigError(f"prompt schedule: {where}: ends at {end:g} s, not after its start at {start:g} s")
    return ScheduleEntry(float(start), text, None if end is None else float(end))


def _snap(seconds: float, plan: SectionPlan) -> int:
    """The section whose start is nearest ``seconds``, half way rounding up; ``num_sections``
    when the video's end is nearer than the last section's start."""
    starts = [plan.section_start_seconds(k) for k in range(plan.num_sections + 1)]
    halfway = [(a + b) / 2 for a, b in itertools.pairwise(starts)]
    return bisect.bisect_right(halfway, seconds + _SNAP_TOLERANCE)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _cut(text: str, limit: int = 48) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
