"""Prompt schedules: the string form, the mapping onto video sections in both modes, blending,
and the tiny pipeline and CLI running them (each prompt encoded once, one entry = a plain prompt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framepack import FramePackPipeline, GenerationConfig
from framepack.cli import demo_image, main
from framepack.errors import ConfigError, GenerationCancelled, InputError
from framepack.prompt_schedule import (
    PromptSchedule,
    ScheduleEntry,
    as_prompt,
    parse_prompt_schedule,
    resolve_prompt,
)
from framepack.runstate import digest, load_run_state
from framepack.sampling.control import TextBlend
from framepack.sampling.loop import generate_latents
from framepack.sampling.sections import plan_sections

# window 3 at 30 fps, 1.2 s: three sections; section 0 is pixel frames 0-12, each later one adds
# 4·3 = 12 frames, so they start at frames 0, 13, 25 (0, 0.43, 0.83 s) and the video ends at 37
# (1.23 s). 0.8 s makes two sections.
FAST = dict(window=3, steps=1, resolution=64, seconds=1.2)
IMAGE = demo_image(64)
WAVES, DANCES = "a man waves", "he starts to dance"


@pytest.fixture(scope="module")
def pipe() -> FramePackPipeline:
    return FramePackPipeline.tiny(seed=0)


# --- the string form ------------------------------------------------------------------------


def test_the_string_form_reads_spans_and_open_ends() -> None:
    schedule = parse_prompt_schedule("  [ 0s - 1.5s :  a man waves ]\n[1.5s:he starts to dance]  ")
    assert schedule.entries == (ScheduleEntry(0.0, WAVES, 1.5), ScheduleEntry(1.5, DANCES))
    assert str(schedule) == "[0s-1.5s: a man waves] [1.5s: he starts to dance]"
    assert parse_prompt_schedule(str(schedule)) == schedule
    assert PromptSchedule([(1.5, DANCES), (0.0, 1.5, WAVES)]) == schedule  # typed, in any order


@pytest.mark.parametrize("plain", ["[cinematic] a man waves", "a man [smiling] waves", "[2 seconds later] he runs", ""])
def test_a_string_not_in_the_schedule_form_stays_a_plain_prompt(plain: str) -> None:
    assert as_prompt(plain) == plain


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[0s: a man] he dances", "'he dances' at character 12 is outside any [TIME: text] group"),
        ("[0s a man]", "'[0s a man]' at character 0: expected [TIME: text] or [START-END: text], no ':' found"),
        ("[0s: a man] [2s: ]", "'[2s: ]' at character 12 has no prompt text"),
        ("[0s: a man] [two: x]", "'[two: x]' at character 12: expected a time like 2s or 1.5s"),
        ("[0s: a man] [2s: he", "the group '[2s: he' at character 12 has no closing ']'"),
        ("[0s: a [red] car]", "'[0s: a [red]' at character 0 holds a '['"),
        ("[2s-1s: a man]", "'[2s-1s: a man]' at character 0: ends at 1 s, not after its start at 2 s"),
        ("[0s-2s: a man] [1s: b]", "[0s-2s: a man] overlaps [1s: b]"),
        ("[0s: a man] [0s: b]", "[0s: a man] and [0s: b] start at the same time"),
    ],
)
def test_a_malformed_schedule_names_the_offending_part(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        as_prompt(text)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "at least one entry"),
        ([(0.0, "  ")], "expected a non-empty prompt text"),
        ([(-1.0, "a")], "expected a start time in seconds >= 0, got -1.0"),
        ([(0.0, float("nan"), "a")], "expected a end time in seconds >= 0"),
        ([(0.0, "a [b]")], "holds no '[' or ']'"),
        (["a"], "expected an entry (start, text) or (start, end, text)"),
    ],
)
def test_a_bad_typed_schedule_is_a_config_error(entries: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        PromptSchedule(entries)


# --- the sections each entry gets ------------------------------------------------------------


def blends(text: str, seconds: float = 5.0, blend: int = 0, window: int = 9) -> list[tuple[int, int, float]]:
    plan = plan_sections(seconds, fps=30, window=window, mode="inverted")
    return [(b.first, b.second, b.weight) for b in resolve_prompt(parse_prompt(text, blend), plan).blends]


def parse_prompt(text: str, blend: int) -> PromptSchedule:
    return parse_prompt_schedule(text, blend_sections=blend)


def test_each_video_section_gets_the_entry_holding_its_start_snapped_to_the_nearest_boundary() -> None:
    # 5 s at window 9: 4 sections. Section 0 is pixel frames 0-36 (the start frame and 4·9 more),
    # each later one adds 36 frames: they start at frames 0, 37, 73, 109, i.e. 0, 1.233, 2.433,
    # 3.633 s, and the video ends at frame 145 (4.833 s). Half way between starts: 0.617, 1.833,
    # 3.033, 4.233 s.
    # 1 s snaps to section 1 (1.233 s), 3.4 s to section 3 (3.633 s), 2.7 s to section 2 (2.433 s)
    assert blends("[0s: a] [1s: b] [3.4s: c]") == [(0, 0, 0.0), (1, 0, 0.0), (1, 0, 0.0), (2, 0, 0.0)]
    assert blends("[0s: a] [2.7s: b]") == [(0, 0, 0.0), (0, 0, 0.0), (1, 0, 0.0), (1, 0, 0.0)]
    # 2.9 s and 3 s are nearer 2.433 s than 3.633 s: section 2 (at 1.1 s a section, they went to 3)
    assert blends("[0s-2.9s: a] [2.9s: b]") == [(0, 0, 0.0), (0, 0, 0.0), (1, 0, 0.0), (1, 0, 0.0)]
    assert blends("[0s: a] [3s: b]") == [(0, 0, 0.0), (0, 0, 0.0), (1, 0, 0.0), (1, 0, 0.0)]
    # 0.62 s is just past half way to section 1 (0.617 s), 0.61 s just before it
    assert blends("[0s: a] [0.62s: b]") == [(0, 0, 0.0), (1, 0, 0.0), (1, 0, 0.0), (1, 0, 0.0)]
    with pytest.raises(ConfigError, match="both snap to section 0"):
        blends("[0s: a] [0.61s: b]")
    # one text twice is one prompt
    assert blends("[0s: a] [1.2s: b] [2.4s: a]") == [(0, 0, 0.0), (1, 0, 0.0), (0, 0, 0.0), (0, 0, 0.0)]


def test_times_map_to_real_section_starts_deep_into_a_long_video() -> None:
    # 60 s at window 9: round(60·30 / 36) = 50 sections; section k >= 1 starts at pixel frame
    # 36·k + 1: section 25 at 901 / 30 = 30.033 s, section 24 at 28.833 s, the last (49) at
    # 1765 / 30 = 58.833 s, and the video ends at frame 1801 (60.033 s).
    thirty = blends("[0s: a] [30s: b]", seconds=60)
    assert thirty == [(0, 0, 0.0)] * 25 + [(1, 0, 0.0)] * 25
    last = blends("[0s: a] [58.5s: b]", seconds=60)  # half way from 57.633 s to 58.833 s is 58.233 s
    assert last == [(0, 0, 0.0)] * 49 + [(1, 0, 0.0)]


def test_a_time_exactly_half_way_between_two_section_starts_rounds_up() -> None:
    # window 1 at 2 fps, 5 s: round(2.5) = 2 sections; section 0 is pixel frames 0-4, section 1
    # starts at frame 5 (2.5 s), the video ends at frame 9 (4.5 s); half way to section 1 is 1.25 s
    plan = plan_sections(5.0, fps=2, window=1, mode="forward")
    assert [plan.section_start_seconds(k) for k in range(3)] == [0.0, 2.5, 4.5]
    assert [b.first for b in resolve_prompt(parse_prompt("[0s: a] [1.25s: b]", 0), plan).blends] == [0, 1]


def test_blends_step_from_the_old_prompt_to_the_new_one_and_stop_at_the_next_entry() -> None:
    # 7.5 s at window 9: 6 sections starting at 0, 1.233, 2.433, 3.633, 4.833, 6.033 s;
    # b from section 1, c from section 4
    assert blends("[0s: a] [1.2s: b] [4.8s: c]", seconds=7.5, blend=2) == [
        (0, 0, 0.0),
        (0, 1, 1 / 3),
        (0, 1, 2 / 3),
        (1, 0, 0.0),
        (1, 2, 1 / 3),
        (1, 2, 2 / 3),
    ]
    assert blends("[0s: a] [1.2s: b] [4.8s: c]", seconds=7.5, blend=3) == [
        (0, 0, 0.0),
        (0, 1, 0.25),
        (0, 1, 0.5),
        (0, 1, 0.75),  # b has three sections: its blend is cut where c starts
        (1, 2, 0.25),
        (1, 2, 0.5),
    ]
    assert blends("[0s: a] [2.4s: a]", blend=2) == [(0, 0, 0.0)] * 4  # the same prompt: nothing to blend


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # 5 s at window 9, as above: sections start at 0, 1.233, 2.433, 3.633 s, the video ends at 4.833 s
        ("[1.2s: a]", "the first entry [1.2s: a] starts at section 1 (1.23 s), so the sections before it"),
        ("[0s: a] [6s: b]", "[6s: b] names 6s, past the end of the 5.00 s video"),
        ("[0s-6s: a]", "[0s-6s: a] names 6s, past the end"),
        (
            "[0s: a] [4.5s: b]",
            "[4.5s: b] starts at 4.5s, nearer the video's end (4.83 s) than its last section's start (3.63 s)",
        ),
        ("[0s: a] [0.3s: b]", "[0s: a] and [0.3s: b] both snap to section 0 (0.00 s)"),
        ("[0s-1s: a] [3s: b]", "no prompt for 1.23 s to 2.43 s, between [0s-1s: a] and [3s: b]"),
        ("[0s-2s: a]", "no prompt after 2.43 s: the last entry [0s-2s: a] ends before the video's last section"),
    ],
)
def test_a_schedule_that_does_not_fit_the_video_names_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        blends(text)
    assert message in str(error.value)


def recorded_pooled(pipe: FramePackPipeline, monkeypatch) -> list[torch.Tensor]:
    """The pooled text vector every section's positive ``prepare`` receives, in generation order."""
    transformer, seen = pipe.components.transformer, []
    prepare = transformer.prepare

    def recording(conditioning, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(conditioning.pooled.clone())
        return prepare(conditioning, *args, **kwargs)

    monkeypatch.setattr(transformer, "prepare", recording)
    return seen


@pytest.mark.parametrize("mode", ["inverted", "forward"])
def test_the_tiny_pipeline_conditions_each_section_on_its_scheduled_prompt(pipe, monkeypatch, mode) -> None:
    config = GenerationConfig(mode=mode, **FAST)
    pooled = {text: pipe.encode(IMAGE, text, config).conditioning.pooled for text in (WAVES, DANCES)}
    assert not torch.equal(pooled[WAVES], pooled[DANCES])
    # 0.7 s is nearer section 2's start (0.83 s) than section 1's (0.43 s): video sections 0, 1 wave,
    # section 2 dances
    inputs = pipe.encode(IMAGE, "[0s: a man waves] [0.7s: he starts to dance]", config)
    seen = recorded_pooled(pipe, monkeypatch)
    # the section loop as GenerationRun runs it (without the VAE decode the pipeline tests cover)
    generate_latents(
        pipe.components.transformer, inputs.conditioning, inputs.start_latent, config, control=inputs.control
    )
    # the inverted loop generates the video's last section first
    expected = [DANCES, WAVES, WAVES] if mode == "inverted" else [WAVES, WAVES, DANCES]
    assert len(seen) == 3
    for got, text in zip(seen, expected):
        assert torch.equal(got, pooled[text]), text


def test_a_one_entry_schedule_is_bit_identical_to_the_plain_prompt(pipe, tmp_path) -> None:
    config = GenerationConfig(**{**FAST, "seconds": 0.8})
    plain = pipe.generate(IMAGE, WAVES, config, run_dir=tmp_path / "plain")
    scheduled = pipe.generate(IMAGE, "[0s: a man waves]", config, run_dir=tmp_path / "scheduled")
    assert torch.equal(scheduled.latents, plain.latents)
    inputs = pipe.encode(IMAGE, PromptSchedule([(0.0, WAVES)]), config)
    assert inputs.control is None
    # and its run fingerprint is the plain prompt's, as runs saved before schedules digested it
    assert pipe.fingerprint(inputs, "[0s: a man waves]", config)["prompt"] == digest(WAVES)
    assert pipe.fingerprint(inputs, WAVES, config)["prompt"] == digest(WAVES)


def test_every_distinct_prompt_is_encoded_once(pipe, monkeypatch) -> None:
    calls = {"text_encoder": 0, "text_encoder_2": 0}
    for name in calls:
        encoder = getattr(pipe.components, name)
        forward = encoder.forward

        def counting(*args, _name=name, _forward=forward, **kwargs):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _forward(*args, **kwargs)

        monkeypatch.setattr(encoder, "forward", counting)
    inputs = pipe.encode(
        IMAGE, "[0s: a man waves] [0.4s: he starts to dance] [0.8s: a man waves]", GenerationConfig(**FAST)
    )
    assert calls == {"text_encoder": 2, "text_encoder_2": 2}  # three sections, two prompts
    assert inputs.control is not None and len(inputs.control.texts) == 2
    assert inputs.control.text_of == (TextBlend(0), TextBlend(1), TextBlend(0))


def test_a_resumed_schedule_continues_it_and_a_changed_one_is_refused(pipe, tmp_path) -> None:
    config = GenerationConfig(**{**FAST, "seconds": 0.8})  # two sections
    schedule = "[0s: a man waves] [0.3s: he starts to dance]"
    whole = pipe.generate(IMAGE, schedule, config, run_dir=tmp_path / "whole")

    def stop_in_second_section(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.section == 1:
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        pipe.generate(IMAGE, schedule, config, run_dir=tmp_path / "cut", callback=stop_in_second_section)
    changed = "[0s: a man waves] [0.3s: he sits down]"
    with pytest.raises(InputError, match=r"settings differ: prompt changed$"):
        pipe.generate(IMAGE, changed, config, resume=tmp_path / "cut")
    with pytest.raises(InputError, match=r"settings differ: prompt changed$"):
        pipe.generate(
            IMAGE, PromptSchedule([(0.0, WAVES), (0.3, DANCES)], blend_sections=1), config, resume=tmp_path / "cut"
        )
    resumed = pipe.generate(IMAGE, PromptSchedule([(0.0, WAVES), (0.3, DANCES)]), config, resume=tmp_path / "cut")
    assert torch.equal(resumed.latents, whole.latents)


def test_a_bad_schedule_fails_before_the_run_folder_is_touched(pipe, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\[9s: b\] names 9s, past the end"):
        pipe.stream(IMAGE, "[0s: a] [9s: b]", GenerationConfig(**FAST), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inverted", "forward"])
def test_plan_prints_each_video_sections_prompt_and_generation_order(mode: str, capsys) -> None:
    schedule = "[0s-2s: a man waves] [2s: he starts to dance]"
    assert main(["plan", "--seconds", "5", "--mode", mode, "--prompt", schedule, "--prompt-blend", "1"]) == 0
    out = capsys.readouterr().out
    # 4 sections starting at frames 0, 37, 73, 109 (0, 1.23, 2.43, 3.63 s); 2 s snaps to section 2
    # (half way from 1.23 s to 2.43 s is 1.83 s), which blends half and half
    generated = [4, 3, 2, 1] if mode == "inverted" else [1, 2, 3, 4]
    order = "last to first" if mode == "inverted" else "first to last"
    expected = [
        f"prompts by video section (generated {order}):",
        f"  video section 0 (0.00 s, generated {generated[0]} of 4): 'a man waves'",
        f"  video section 1 (1.23 s, generated {generated[1]} of 4): 'a man waves'",
        f"  video section 2 (2.43 s, generated {generated[2]} of 4): 50% 'a man waves' + 50% 'he starts to dance'",
        f"  video section 3 (3.63 s, generated {generated[3]} of 4): 'he starts to dance'",
    ]
    assert out.splitlines()[-5:] == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["plan", "--prompt", "[0s: a] [2s he dances]"],
            "error: --prompt: prompt schedule: '[2s he dances]' at character 8",
        ),
        (
            ["plan", "--prompt", "a man waves", "--prompt-blend", "2"],
            "error: --prompt-blend 2: only a prompt schedule blends",
        ),
        (["plan", "--prompt", "[0s: a] [2s: b]", "--prompt-blend", "-1"], "error: --prompt-blend: expected 0 to 1000"),
        (
            ["generate", "--tiny", "--prompt", "[0s: a] [9s: b]"],
            "error: prompt schedule: [9s: b] names 9s, past the end",
        ),
    ],
)
def test_a_bad_schedule_on_the_command_line_is_one_error_line(arguments: list[str], message: str, capsys) -> None:
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_generate_takes_a_schedule_and_a_blend(pipe, tmp_path: Path) -> None:
    args = ["--tiny", "--seconds", "0.8", "--window", "3", "--steps", "1", "--resolution", "64", "--seed", "5"]
    schedule = "[0s: a man waves] [0.3s: he starts to dance]"
    run_dir = tmp_path / "run"
    command = ["generate", *args, "--prompt", schedule, "--prompt-blend", "1", "--run-dir", str(run_dir)]
    assert main([*command, "--out", str(tmp_path / "x.mp4")]) == 0
    latents = load_run_state(run_dir).tensors["history"]  # the finished video's latents
    config = GenerationConfig(seconds=0.8, window=3, steps=1, resolution=64, seed=5)
    entries = [(0.0, WAVES), (0.3, DANCES)]
    blended = pipe.generate(IMAGE, PromptSchedule(entries, blend_sections=1), config, run_dir=tmp_path / "b")
    cut = pipe.generate(IMAGE, PromptSchedule(entries), config, run_dir=tmp_path / "c")
    assert torch.equal(latents, blended.latents) and not torch.equal(latents, cut.latents)
