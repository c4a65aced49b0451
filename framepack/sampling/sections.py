"""Section plans (which frames each section generates, at which indices, from which history)
and the history bookkeeping that turns finished sections into the next section's packed context.

Two orders, as the reference apps:

- ``inverted`` (FramePackI2V_HY, anti-drifting): sections are generated from the END of the
  video back to its start. Each window sits after the start frame and ``padding`` blank
  windows; its clean context is the start frame plus the frames generated just after it
  (the front of the history). The last generated section (padding 0) is joined to the start latent.
- ``forward`` (FramePack-F1): sections are appended in temporal order; the context is the
  start frame plus the end of the history.

The history a section reads is the real latents so far (temporal order) padded with 19 zero
frames on the side not yet generated: after them in ``inverted``, before them in ``forward``.
The ``history_*`` slices of a layout index that 19-frame padded history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from ..conditioning import PackedContext
from ..errors import ConfigError
from ..models.packing import HISTORY_CONTEXT_FRAMES

MODES = ("inverted", "forward")

# The reference's split lists, by name. A section's frame indices are ``arange(sum(sizes))``
# split into these consecutive parts (``window`` and ``blank`` are the section's sizes):
#   inverted (demo_gradio.py):  indices.split([1, latent_padding_size, latent_window_size, 1, 2, 16])
#   forward (demo_gradio_f1.py): indices.split([1, 16, 2, 1, latent_window_size])
INVERTED_INDEX_PARTS = ("start", "blank", "latent", "clean_1x", "clean_2x", "clean_4x")
FORWARD_INDEX_PARTS = ("start", "clean_4x", "clean_2x", "clean_1x", "latent")
# The context frames each group reads from the history, in the history's temporal order:
#   inverted: history[:, :, :1 + 2 + 16].split([1, 2, 16])     (the front of the history)
#   forward:  history[:, :, -(16 + 2 + 1):].split([16, 2, 1])  (the end of the history)
CONTEXT_FRAMES = HISTORY_CONTEXT_FRAMES
HISTORY_FRAMES = sum(CONTEXT_FRAMES.values())  # 19: 1x, 2x and 4x context frames
_INVERTED_HISTORY_PARTS = ("clean_1x", "clean_2x", "clean_4x")
_FORWARD_HISTORY_PARTS = ("clean_4x", "clean_2x", "clean_1x")
# 33 latent frames = 129 pixel frames, the longest clip HunyuanVideo (the base model) was made
# for and the top of the reference app's window range (demo_gradio.py); a section's tokens and
# memory grow with it, so a larger window is a typo that would otherwise run out of memory.
MAX_WINDOW = 33
# About an hour of video at 30 fps (4 * 27000 - 3 pixel frames): far beyond any real use,
# small enough that a plan is built instantly rather than for hours (or out of memory).
MAX_LATENT_FRAMES = 27_000

Slice = tuple[int, "int | None"]


def split_indices(sizes: dict[str, int], start: int = 0) -> dict[str, range]:
    """``arange(start, start + sum(sizes)).split(list(sizes.values()))`` as named, consecutive ranges."""
    parts = {}
    for name, size in sizes.items():
        parts[name] = range(start, start + size)
        start += size
    return parts


def _history_slices(order: tuple[str, ...], *, from_end: bool) -> dict[str, Slice]:
    """(start, stop) of each group's frames in the 19-frame padded history, split in ``order``."""
    parts = split_indices({name: CONTEXT_FRAMES[name] for name in order}, -HISTORY_FRAMES if from_end else 0)
    return {name: (r.start, r.stop or None) for name, r in parts.items()}  # stop 0 from the end: to the end


_INVERTED_HISTORY = _history_slices(_INVERTED_HISTORY_PARTS, from_end=False)  # 1x [0:1], 2x [1:3], 4x [3:19]
_FORWARD_HISTORY = _history_slices(_FORWARD_HISTORY_PARTS, from_end=True)  # 4x [-19:-3], 2x [-3:-1], 1x [-1:]


@dataclass(frozen=True)
class SectionLayout:
    """One section: the frame indices the transformer sees and where its latents come from and go.

    index               position in generation order (0 = generated first)
    video_index         position in the finished video (0 = its first section); the inverted
                        loop generates the video's last section first
    padding             blank windows between the start frame and this window (inverted; 0 in forward)
    latent_indices      frame index of each noisy latent frame
    clean_indices       (start frame, 1x history frame)
    clean_2x_indices    indices of the two 2x history frames
    clean_4x_indices    indices of the sixteen 4x history frames
    history_1x/2x/4x    (start, stop) slices of the 19-frame padded history feeding each group
    video_frames        (start, stop) latent frames this section fills in the final video
    joins_start         the start latent is prepended to this section's output (inverted, last section)
    """

    index: int
    video_index: int
    padding: int
    latent_indices: tuple[int, ...]
    clean_indices: tuple[int, int]
    clean_2x_indices: tuple[int, ...]
    clean_4x_indices: tuple[int, ...]
    history_1x: Slice
    history_2x: Slice
    history_4x: Slice
    video_frames: tuple[int, int]
    joins_start: bool

    def describe(self) -> str:
        def span(values: tuple[int, ...]) -> str:
            return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])

        def cut(s: Slice) -> str:
            return f"[{s[0]}:{'' if s[1] is None else s[1]}]"

        return (
            f"section {self.index}: padding {self.padding}, latent {span(self.latent_indices)}, "
            f"clean {list(self.clean_indices)}, 2x {span(self.clean_2x_indices)}, 4x {span(self.clean_4x_indices)}; "
            f"1x/2x/4x <- history{cut(self.history_1x)}/{cut(self.history_2x)}/{cut(self.history_4x)}; "
            f"fills video latents {self.video_frames[0]}..{self.video_frames[1] - 1}"
            + (" (with the start latent)" if self.joins_start else "")
        )


@dataclass(frozen=True)
class SectionPlan:
    """Every section of one video, in generation order."""

    mode: str
    seconds: float
    fps: int
    window: int
    sections: tuple[SectionLayout, ...]

    @property
    def num_sections(self) -> int:
        return len(self.sections)

    @property
    def window_pixel_frames(self) -> int:
        """Pixel frames of one section window (4·window − 3), which set its noise shape and shift."""
        return 4 * self.window - 3

    @property
    def latent_frames(self) -> int:
        """Latent frames of the finished video: the start latent plus every window."""
        return self.num_sections * self.window + 1

    @property
    def pixel_frames(self) -> int:
        return 4 * self.latent_frames - 3

    @property
    def video_seconds(self) -> float:
        """How long the finished video is: its pixel frames at its frame rate (5 s asks for
        145 frames at window 9, 4.83 s; 60 s for 1801 frames, 60.03 s)."""
        return self.pixel_frames / self.fps

    @property
    def latest_time(self) -> float:
        """The latest time a prompt schedule or keyframe may name: the video's end, or the length
        asked for if that is later (an entry ending at 5 s in a 5 s video is not refused)."""
        return max(self.seconds, self.video_seconds)

    def section_start_seconds(self, video_index: int) -> float:
        """When video section ``video_index`` (0 = the video's first) starts in the finished video:
        the time of its first pixel frame. Section 0 starts with the start frame at 0 s; every
        section adds 4·window pixel frames (its latents after the first), so section k ≥ 1 starts
        at pixel frame 4·k·window + 1: 37 / 30 = 1.23 s for k = 1 at window 9 and 30 fps.
        ``video_index == num_sections`` is where a next section would start (the video's end)."""
        if not 0 <= video_index <= self.num_sections:
            raise ValueError(f"video_index: expected 0 to {self.num_sections}, got {video_index}")
        return self._section_starts[video_index]

    @cached_property
    def _section_starts(self) -> tuple[float, ...]:
        """Every section's start from its layout's first latent frame, and the video's end after them."""
        # Section 0 holds the start frame (pixel frame 0) in both modes, whichever layout joins it.
        first_latents = [layout.video_frames[0] for layout in self.in_video_order()[1:]]
        first_latents.append(self.latent_frames)  # where a next section would begin
        # latent j >= 1 decodes to pixel frames 4j-3 .. 4j
        return (0.0, *((4 * j - 3) / self.fps for j in first_latents))

    def in_video_order(self) -> tuple[SectionLayout, ...]:
        """The sections from the video's first to its last."""
        return tuple(sorted(self.sections, key=lambda s: s.video_index))

    def resumed_latent_frames(self, sections_done: int) -> int:
        """Real latent frames in the history after ``sections_done`` sections.

        Forward histories start with the start latent; inverted ones get it with the last section.
        """
        if self.mode == "forward":
            return 1 + sections_done * self.window
        return sections_done * self.window + (1 if sections_done == self.num_sections else 0)

    def describe(self) -> str:
        head = (
            f"{self.mode} plan: {self.seconds:g} s at {self.fps} fps, window {self.window} -> "
            f"{self.num_sections} section(s), {self.latent_frames} latent frames ({self.pixel_frames} pixel frames)"
        )
        return "\n".join([head] + ["  " + s.describe() for s in self.sections])

    def __str__(self) -> str:
        return self.describe()


def section_count(seconds: float, fps: int, window: int) -> int:
    """The reference's count: ``max(round(seconds·fps / (4·window)), 1)`` with Python's round (half to even)."""
    return int(max(round(seconds * fps / (window * 4)), 1))


def inverted_paddings(num_sections: int) -> list[int]:
    """Blank windows before each section, in generation order: n−1 … 0, or 3, 2, …, 2, 1, 0 beyond four sections."""
    if num_sections > 4:
        return [3] + [2] * (num_sections - 3) + [1, 0]
    return list(range(num_sections - 1, -1, -1))


def check_length(seconds: float, fps: int, window: int) -> None:
    """Raise ConfigError unless ``window`` is in [1, MAX_WINDOW] and the video has at most MAX_LATENT_FRAMES."""
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ConfigError(f"window: expected an int in [1, {MAX_WINDOW}] latent frames, got {window!r}")
    # The float guard first: seconds * fps may be too large (or inf) for section_count's round().
    too_long = not seconds * fps / (window * 4) <= MAX_LATENT_FRAMES
    if too_long or section_count(seconds, fps, window) * window + 1 > MAX_LATENT_FRAMES:
        longest = (4 * MAX_LATENT_FRAMES - 3) / fps
        raise ConfigError(
            f"seconds: expected a video of at most {MAX_LATENT_FRAMES} latent frames ({longest:g} s at {fps} fps), "
            f"got {seconds:g} s"
        )


def plan_sections(seconds: float, *, fps: int = 30, window: int = 9, mode: str) -> SectionPlan:
    """Plan a video of ``seconds`` at ``fps`` in windows of ``window`` latent frames."""
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {MODES}, got {mode!r}")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (math.isfinite(seconds) and seconds > 0)
    ):
        raise ConfigError(f"seconds: expected a finite number > 0, got {seconds!r}")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ConfigError(f"fps: expected an int >= 1, got {fps!r}")
    check_length(seconds, fps, window)
    count = section_count(seconds, fps, window)
    if mode == "inverted":
        sections = tuple(_inverted_layout(i, pad, window, count) for i, pad in enumerate(inverted_paddings(count)))
    else:
        sections = tuple(_forward_layout(i, window) for i in range(count))
    return SectionPlan(mode, float(seconds), fps, window, sections)


def _inverted_layout(index: int, padding: int, window: int, count: int) -> SectionLayout:
    sizes = {"start": 1, "blank": padding * window, "latent": window, **CONTEXT_FRAMES}
    parts = split_indices({name: sizes[name] for name in INVERTED_INDEX_PARTS})
    temporal_slot = count - 1 - index  # generation runs from the video's end to its start
    start_frame = 1 + temporal_slot * window
    video_frames = (0 if padding == 0 else start_frame, start_frame + window)
    return _layout(index, temporal_slot, padding, parts, _INVERTED_HISTORY, video_frames, joins_start=padding == 0)


def _forward_layout(index: int, window: int) -> SectionLayout:
    sizes = {"start": 1, "latent": window, **CONTEXT_FRAMES}
    parts = split_indices({name: sizes[name] for name in FORWARD_INDEX_PARTS})
    video_frames = (1 + index * window, 1 + (index + 1) * window)
    return _layout(index, index, 0, parts, _FORWARD_HISTORY, video_frames, joins_start=False)


def _layout(
    index: int,
    video_index: int,
    padding: int,
    parts: dict[str, range],
    history: dict[str, Slice],
    video_frames: tuple[int, int],
    *,
    joins_start: bool,
) -> SectionLayout:
    return SectionLayout(
        index=index,
        video_index=video_index,
        padding=padding,
        latent_indices=tuple(parts["latent"]),
        clean_indices=(parts["start"][0], parts["clean_1x"][0]),
        clean_2x_indices=tuple(parts["clean_2x"]),
        clean_4x_indices=tuple(parts["clean_4x"]),
        history_1x=history["clean_1x"],
        history_2x=history["clean_2x"],
        history_4x=history["clean_4x"],
        video_frames=video_frames,
        joins_start=joins_start,
    )


class SectionHistory:
    """The real latents generated so far, in temporal order, and the context they give a section.

    In ``forward`` mode the history starts as the start latent; in ``inverted`` mode it starts
    empty and the start latent joins with the last section.
    """

    def __init__(self, mode: str, start_latent: torch.Tensor) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode: expected one of {MODES}, got {mode!r}")
        self.mode = mode
        self.start_latent = start_latent
        self.latents = start_latent if mode == "forward" else start_latent[:, :, :0]

    def context(
        self, layout: SectionLayout, *, end_latent: torch.Tensor | None = None, start: torch.Tensor | None = None
    ) -> PackedContext:
        """The packed context of ``layout``; ``end_latent`` replaces the 1x history frame (end-frame
        conditioning) and ``start`` the start latent in the start-frame slot (a keyframe)."""
        padded = self._padded()

        def take(s: Slice) -> torch.Tensor:
            return padded[:, :, s[0] : s[1]]

        post = take(layout.history_1x) if end_latent is None else end_latent
        device = self.start_latent.device

        def indices(values: tuple[int, ...]) -> torch.Tensor:
            return torch.tensor([values], dtype=torch.int64, device=device)

        return PackedContext(
            latent_indices=indices(layout.latent_indices),
            clean=torch.cat([self.start_latent if start is None else start.to(padded), post.to(padded)], dim=2),
            clean_indices=indices(layout.clean_indices),
            clean_2x=take(layout.history_2x),
            clean_2x_indices=indices(layout.clean_2x_indices),
            clean_4x=take(layout.history_4x),
            clean_4x_indices=indices(layout.clean_4x_indices),
        )

    def add(self, layout: SectionLayout, generated: torch.Tensor) -> torch.Tensor:
        """Record a finished section; returns the latents it added, in temporal order."""
        if layout.joins_start:
            generated = torch.cat([self.start_latent, generated.to(self.start_latent)], dim=2)
        if self.mode == "inverted":
            self.latents = torch.cat([generated.to(self.latents), self.latents], dim=2)
        else:
            self.latents = torch.cat([self.latents, generated.to(self.latents)], dim=2)
        return generated

    def _padded(self) -> torch.Tensor:
        """The 19 history frames nearest the next section, zero-padded on the side not generated yet."""
        if self.mode == "inverted":
            near = self.latents[:, :, :HISTORY_FRAMES]
        else:
            near = self.latents[:, :, -HISTORY_FRAMES:]
        b, c, t, h, w = near.shape
        zeros = near.new_zeros(b, c, HISTORY_FRAMES - t, h, w)
        return torch.cat([near, zeros] if self.mode == "inverted" else [zeros, near], dim=2)


END_EMBED_MODES = ("weighted_average", "linear", "disabled")


def section_image_embeds(
    start: torch.Tensor, end: torch.Tensor, *, mode: str, strength: float, index: int, count: int
) -> torch.Tensor:
    """Image embeddings of section ``index`` (generation order) of ``count`` when an end image is given.

    As kijai's FramePackSampler: "weighted_average" mixes start·s + end·(1−s) on every section;
    "linear" goes from the start embeds on the first generated section (the video's end) to the
    end embeds on the last one (the video's start); "disabled" uses start·s.
    """
    if mode == "disabled":
        return start * strength
    if mode == "linear":
        start_weight = 1.0 - index / (count - 1) if count > 1 else 1.0
    elif mode == "weighted_average":
        start_weight = strength
    else:
        raise ConfigError(f"end_embed_mode: expected one of {END_EMBED_MODES}, got {mode!r}")
    return start * start_weight + end * (1.0 - start_weight)
