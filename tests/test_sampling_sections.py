from __future__ import annotations

import time

import pytest
import torch

from framepack.errors import ConfigError
from framepack.sampling.sections import (
    MAX_LATENT_FRAMES,
    SectionHistory,
    inverted_paddings,
    plan_sections,
    section_count,
)

# Hand-worked rows, window 9: (padding, first..last latent index, clean, 2x, first..last 4x, video frames)
INVERTED_ROWS = {
    3: (3, 28, 36, (0, 37), (38, 39), 40, 55),
    2: (2, 19, 27, (0, 28), (29, 30), 31, 46),
    1: (1, 10, 18, (0, 19), (20, 21), 22, 37),
    0: (0, 1, 9, (0, 10), (11, 12), 13, 28),
}
# seconds -> (sections, paddings in generation order, video latent frames each section fills)
INVERTED_PLANS = {
    1.0: (1, [0], [(0, 10)]),
    3.0: (2, [1, 0], [(10, 19), (0, 10)]),  # 2.5 rounds half to even -> 2
    5.0: (4, [3, 2, 1, 0], [(28, 37), (19, 28), (10, 19), (0, 10)]),
    6.0: (5, [3, 2, 2, 1, 0], [(37, 46), (28, 37), (19, 28), (10, 19), (0, 10)]),
    10.0: (
        8,
        [3, 2, 2, 2, 2, 2, 1, 0],
        [(64, 73), (55, 64), (46, 55), (37, 46), (28, 37), (19, 28), (10, 19), (0, 10)],
    ),
}


@pytest.mark.parametrize("seconds", sorted(INVERTED_PLANS))
def test_inverted_layouts(seconds: float) -> None:
    count, paddings, video = INVERTED_PLANS[seconds]
    plan = plan_sections(seconds, mode="inverted")
    assert plan.num_sections == count
    assert plan.latent_frames == 9 * count + 1 and plan.pixel_frames == 36 * count + 1
    assert [s.padding for s in plan.sections] == paddings
    assert [s.video_frames for s in plan.sections] == video
    for i, section in enumerate(plan.sections):
        _, first, last, clean, x2, first4, last4 = INVERTED_ROWS[section.padding]
        assert section.index == i
        assert section.latent_indices == tuple(range(first, last + 1))
        assert section.clean_indices == clean and section.clean_2x_indices == x2
        assert section.clean_4x_indices == tuple(range(first4, last4 + 1))
        assert (section.history_1x, section.history_2x, section.history_4x) == ((0, 1), (1, 3), (3, 19))
        assert section.joins_start == (i == count - 1)


@pytest.mark.parametrize("seconds, count", [(1.0, 1), (3.0, 2), (5.0, 4), (6.0, 5), (10.0, 8)])
def test_forward_layouts(seconds: float, count: int) -> None:
    plan = plan_sections(seconds, mode="forward")
    assert plan.num_sections == count and plan.latent_frames == 9 * count + 1
    for i, section in enumerate(plan.sections):
        assert section.latent_indices == (20, 21, 22, 23, 24, 25, 26, 27, 28)
        assert section.clean_indices == (0, 19) and section.clean_2x_indices == (17, 18)
        assert section.clean_4x_indices == tuple(range(1, 17))
        assert (section.history_1x, section.history_2x, section.history_4x) == ((-1, None), (-3, -1), (-19, -3))
        assert section.video_frames == (1 + 9 * i, 10 + 9 * i)
        assert not section.joins_start


@pytest.mark.parametrize("window", [1, 5, 9, 33])
def test_layouts_are_the_reference_splits(window: int) -> None:
    """Index groups exactly as the demos' torch splits give them, for every padding and window."""
    for section in plan_sections(20.0, window=window, mode="inverted").sections:
        pad = section.padding * window
        start, _, latent, post, x2, x4 = torch.arange(1 + pad + window + 1 + 2 + 16).split([1, pad, window, 1, 2, 16])
        assert section.latent_indices == tuple(latent.tolist())
        assert section.clean_indices == (*start.tolist(), *post.tolist())
        assert (section.clean_2x_indices, section.clean_4x_indices) == (tuple(x2.tolist()), tuple(x4.tolist()))
    for section in plan_sections(20.0, window=window, mode="forward").sections:
        start, x4, x2, post, latent = torch.arange(1 + 16 + 2 + 1 + window).split([1, 16, 2, 1, window])
        assert section.latent_indices == tuple(latent.tolist())
        assert section.clean_indices == (*start.tolist(), *post.tolist())
        assert (section.clean_2x_indices, section.clean_4x_indices) == (tuple(x2.tolist()), tuple(x4.tolist()))
    history = torch.arange(40)
    for mode, parts in (("inverted", history[:19].split([1, 2, 16])), ("forward", history[-19:].split([16, 2, 1]))):
        one, two, four = parts if mode == "inverted" else parts[::-1]
        layout = plan_sections(5.0, mode=mode).sections[0]
        for got, want in ((layout.history_1x, one), (layout.history_2x, two), (layout.history_4x, four)):
            assert torch.equal(history[got[0] : got[1]], want)


def test_counts_and_paddings() -> None:
    assert [section_count(s, 30, 9) for s in (0.1, 1.0, 3.0, 5.0, 10.0, 120.0)] == [1, 1, 2, 4, 8, 100]
    assert section_count(2.0, 30, 5) == 3  # 60 / 20
    assert inverted_paddings(4) == [3, 2, 1, 0]
    assert inverted_paddings(6) == [3, 2, 2, 2, 1, 0]


def test_describe_is_readable() -> None:
    text = str(plan_sections(5, mode="inverted"))
    assert text.splitlines()[0] == (
        "inverted plan: 5 s at 30 fps, window 9 -> 4 section(s), 37 latent frames (145 pixel frames)"
    )
    assert "latent 28..36, clean [0, 37], 2x 38..39, 4x 40..55" in text.splitlines()[1]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(seconds=-1.0, mode="inverted"),
        dict(seconds=5.0, mode="backward"),
        dict(seconds=5.0, window=0, mode="forward"),
        dict(seconds=float("inf"), mode="forward"),
        dict(seconds=1e9, mode="inverted"),
        dict(seconds=1e308, mode="forward"),
        dict(seconds=5.0, window=100_000, mode="inverted"),
    ],
)
def test_bad_plans(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        plan_sections(**kwargs)


def frames(values: list[float]) -> torch.Tensor:
    """[1, 1, T, 1, 1] latents with one value per frame."""
    return torch.tensor(values).view(1, 1, -1, 1, 1)


def test_inverted_history_context_by_hand() -> None:
    plan = plan_sections(5, mode="inverted")
    history = SectionHistory("inverted", frames([5.0]))
    first = history.context(plan.sections[0])
    assert first.clean.flatten().tolist() == [5.0, 0.0]
    assert first.clean_2x.flatten().tolist() == [0.0] * 2 and first.clean_4x.flatten().tolist() == [0.0] * 16
    assert first.latent_indices.tolist() == [list(range(28, 37))]

    added = history.add(plan.sections[0], frames([10, 11, 12, 13, 14, 15, 16, 17, 18]))
    assert added.flatten().tolist() == [10, 11, 12, 13, 14, 15, 16, 17, 18]
    second = history.context(plan.sections[1])
    assert second.clean.flatten().tolist() == [5, 10]
    assert second.clean_2x.flatten().tolist() == [11, 12]
    assert second.clean_4x.flatten().tolist() == [13, 14, 15, 16, 17, 18] + [0] * 10

    history.add(plan.sections[1], frames([20, 21, 22, 23, 24, 25, 26, 27, 28]))
    third = history.context(plan.sections[2])
    assert third.clean.flatten().tolist() == [5, 20]
    assert third.clean_4x.flatten().tolist() == [23, 24, 25, 26, 27, 28, 10, 11, 12, 13, 14, 15, 16, 17, 18, 0]
    with_end = history.context(plan.sections[2], end_latent=frames([7.0]))
    assert with_end.clean.flatten().tolist() == [5, 7]

    history.add(plan.sections[2], frames([30] * 9))
    last = history.add(plan.sections[3], frames([40] * 9))
    assert last.flatten().tolist() == [5] + [40] * 9
    assert history.latents.flatten().tolist() == [5] + [40] * 9 + [30] * 9 + list(range(20, 29)) + list(range(10, 19))


def test_forward_history_context_by_hand() -> None:
    plan = plan_sections(5, mode="forward")
    history = SectionHistory("forward", frames([5.0]))
    first = history.context(plan.sections[0])
    assert first.clean.flatten().tolist() == [5, 5]  # 1x is the start latent itself
    assert first.clean_2x.flatten().tolist() == [0, 0] and first.clean_4x.flatten().tolist() == [0] * 16

    history.add(plan.sections[0], frames([10, 11, 12, 13, 14, 15, 16, 17, 18]))
    second = history.context(plan.sections[1])
    assert second.clean.flatten().tolist() == [5, 18]
    assert second.clean_2x.flatten().tolist() == [16, 17]
    assert second.clean_4x.flatten().tolist() == [0] * 9 + [5, 10, 11, 12, 13, 14, 15]
    history.add(plan.sections[1], frames([20, 21, 22, 23, 24, 25, 26, 27, 28]))
    third = history.context(plan.sections[2])
    assert third.clean.flatten().tolist() == [5, 28]
    assert third.clean_2x.flatten().tolist() == [26, 27]
    assert third.clean_4x.flatten().tolist() == [5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25]


def test_the_longest_plan_is_refused_or_built_at_once() -> None:
    """An hour of video plans in well under a second; one frame over the bound is refused, not built."""
    start = time.monotonic()
    assert plan_sections(3599.0, mode="inverted").latent_frames <= MAX_LATENT_FRAMES
    with pytest.raises(ConfigError, match="at most 27000 latent frames"):
        plan_sections(3600.0, mode="inverted")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("mode", ["inverted", "forward"])
def test_section_starts_are_the_times_of_their_first_pixel_frames(mode: str) -> None:
    # 5 s at window 9, 30 fps: 4 sections. Section 0 is the start frame and 4·9 = 36 more (pixel
    # frames 0-36); every later section adds 36: they start at frames 0, 37, 73, 109 and the video
    # (145 frames) ends at frame 145.
    plan = plan_sections(5.0, fps=30, window=9, mode=mode)
    assert [plan.section_start_seconds(k) for k in range(5)] == [0.0, 37 / 30, 73 / 30, 109 / 30, 145 / 30]
    assert plan.video_seconds == 145 / 30
    assert plan.latest_time == 5.0  # the length asked for is later than the last frame
    # 60 s: 50 sections; the last starts at frame 36·49 + 1 = 1765 (58.83 s), not 49·1.1 = 53.9 s
    long = plan_sections(60.0, fps=30, window=9, mode=mode)
    assert long.section_start_seconds(49) == 1765 / 30
    assert long.latest_time == long.video_seconds == 1801 / 30
    for bad in (-1, 51):
        with pytest.raises(ValueError, match="video_index"):
            long.section_start_seconds(bad)
