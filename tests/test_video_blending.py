"""Streaming section blending equals the reference's soft_append over the whole video."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from framepack.errors import ConfigError, InputError
from framepack.video import FrameAssembler, SectionBlender, pixels_to_uint8

WINDOW = 3  # latent window w; overlap 4w - 3 = 9 pixel frames
OVERLAP = 4 * WINDOW - 3
HEIGHT, WIDTH = 4, 6


# --- plain transcription of the reference (diffusers_helper/utils.py), test-only -----------------
def soft_append_bcthw(history: torch.Tensor, current: torch.Tensor, overlap: int = 0) -> torch.Tensor:
    if overlap <= 0:
        return torch.cat([history, current], dim=2)
    assert history.shape[2] >= overlap, f"History length ({history.shape[2]}) must be >= overlap ({overlap})"
    assert current.shape[2] >= overlap, f"Current length ({current.shape[2]}) must be >= overlap ({overlap})"
    weights = torch.linspace(1, 0, overlap, dtype=history.dtype, device=history.device).view(1, 1, -1, 1, 1)
    blended = weights * history[:, :, -overlap:] + (1 - weights) * current[:, :, :overlap]
    output = torch.cat([history[:, :, :-overlap], blended, current[:, :, overlap:]], dim=2)
    return output.to(history)


def reference_uint8(x: torch.Tensor) -> np.ndarray:
    """save_bcthw_as_mp4's conversion for batch 1: b c t h w -> t h w c."""
    x = x.float().clamp(-1, 1) * 127.5 + 127.5
    return x.to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()


# ---------------------------------------------------------------------------------------------------


def section_lengths(mode: str, sections: int) -> list[int]:
    """Decoded frames per section, as the demos decode them (demo_gradio.py, demo_gradio_f1.py)."""
    if mode == "forward":  # first: 1 + w latents; later: 2w latents
        return [4 * WINDOW + 1] + [8 * WINDOW - 3] * (sections - 1)
    if sections == 1:  # the only section is also the last: start latent + w
        return [4 * WINDOW + 1]
    # inverted: first w latents; middle 2w; last 2w + 1
    return [4 * WINDOW - 3] + [8 * WINDOW - 3] * (sections - 2) + [8 * WINDOW + 1]


def random_sections(mode: str, sections: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(sections * 10 + len(mode))
    # slightly beyond [-1, 1] so the clamp matters
    return [
        (torch.rand(1, 3, t, HEIGHT, WIDTH, generator=generator) * 2.4 - 1.2).to(dtype)
        for t in section_lengths(mode, sections)
    ]


def reference_history(mode: str, sections: list[torch.Tensor]) -> list[torch.Tensor]:
    """The reference's history_pixels after each section."""
    history, states = None, []
    for current in sections:
        if history is None:
            history = current
        elif mode == "forward":
            history = soft_append_bcthw(history, current, OVERLAP)
        else:
            history = soft_append_bcthw(current, history, OVERLAP)
        states.append(history)
    return states


@pytest.mark.parametrize("mode", ["forward", "inverted"])
@pytest.mark.parametrize("sections", [1, 2, 5])
def test_assembler_equals_reference_after_every_section(tmp_path: Path, mode: str, sections: int) -> None:
    inputs = random_sections(mode, sections)
    states = reference_history(mode, inputs)
    with FrameAssembler(mode, OVERLAP, spool_dir=tmp_path / "spool") as assembler:
        for section, state in zip(inputs, states):
            assembler.add(section)
            frames = np.stack(list(assembler.frames()))
            np.testing.assert_array_equal(frames, reference_uint8(state))
            assert len(assembler) == state.shape[2]
    # 4nw + 1 pixel frames in both modes, as the demos produce
    assert states[-1].shape[2] == 4 * sections * WINDOW + 1


@pytest.mark.parametrize("mode", ["forward", "inverted"])
def test_blender_holds_only_the_overlap_and_chunks_tile_the_video(mode: str) -> None:
    inputs = random_sections(mode, 4)
    blender = SectionBlender(mode, OVERLAP)
    chunks = []
    for section in inputs:
        chunks.append(blender.add(section[0]))  # [3, t, H, W] is accepted too
        assert len(blender.held_frames()) == OVERLAP
    chunks.append(blender.finish())
    ordered = chunks if mode == "forward" else chunks[::-1]
    np.testing.assert_array_equal(np.concatenate(ordered), reference_uint8(reference_history(mode, inputs)[-1]))
    with pytest.raises(InputError, match="finished"):
        blender.add(inputs[1])


def test_float16_reference_is_within_one_level() -> None:
    # The demos keep history_pixels in float16; our float32 blend of the same float16 sections
    # differs from theirs only by float16 rounding, i.e. at most one uint8 level after truncation.
    inputs = random_sections("inverted", 4, dtype=torch.float16)
    half = reference_uint8(reference_history("inverted", inputs)[-1]).astype(int)
    blender = SectionBlender("inverted", OVERLAP)
    chunks = [blender.add(section) for section in inputs] + [blender.finish()]
    ours = np.concatenate(chunks[::-1]).astype(int)
    assert np.abs(ours - half).max() <= 1


def test_overlap_zero_is_plain_concatenation() -> None:
    inputs = random_sections("forward", 3)
    blender = SectionBlender("forward", 0)
    frames = np.concatenate([blender.add(section) for section in inputs] + [blender.finish()])
    np.testing.assert_array_equal(frames, reference_uint8(torch.cat(inputs, dim=2)))


def test_pixels_to_uint8_truncates() -> None:
    # 127.5 * x + 127.5: -1 -> 0, 1 -> 255, 0 -> 127.5 -> 127, -0.9999 -> 0.01275 -> 0, 2 -> clamp -> 255
    pixels = torch.tensor([-1.0, 1.0, 0.0, -0.9999, 2.0, -3.0]).view(1, 6, 1, 1).expand(3, 6, 1, 1)
    assert pixels_to_uint8(pixels)[:, 0, 0, 0].tolist() == [0, 255, 127, 0, 255, 0]


def test_assembler_writes_the_video(tmp_path: Path) -> None:
    inputs = random_sections("inverted", 3)
    with FrameAssembler("inverted", OVERLAP) as assembler:
        for section in inputs:
            assembler.add(section)
        spool = assembler.spool_dir
        path = assembler.write_mp4(tmp_path / "v.mp4", crf=0)
    assert not spool.exists()  # the private spool is gone after close
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4 * 3 * WINDOW + 1


@pytest.mark.parametrize("mode", ["forward", "inverted"])
def test_frames_are_those_of_the_call_even_when_read_later(mode: str) -> None:
    inputs = random_sections(mode, 3)
    with FrameAssembler(mode, OVERLAP) as assembler:
        assembler.add(inputs[0])
        assembler.add(inputs[1])
        taken = assembler.frames()  # a preview encoder on another thread may read it a section later
        assembler.add(inputs[2])
        expected = reference_uint8(reference_history(mode, inputs)[1])
        assert np.array_equal(np.stack(list(taken)), expected)


def test_bad_sections() -> None:
    with pytest.raises(ConfigError, match="mode"):
        SectionBlender("backward", OVERLAP)
    with pytest.raises(ConfigError, match="overlap"):
        SectionBlender("forward", -1)
    blender = SectionBlender("forward", OVERLAP)
    with pytest.raises(InputError, match="float"):
        blender.add(torch.zeros(1, 3, 13, 4, 6, dtype=torch.uint8))
    with pytest.raises(InputError, match="batch size 1"):
        blender.add(torch.zeros(2, 3, 13, 4, 6))
    with pytest.raises(InputError, match=r"\(1, 4, 13, 4, 6\)"):
        blender.add(torch.zeros(1, 4, 13, 4, 6))
    blender.add(torch.zeros(1, 3, 13, 4, 6))
    with pytest.raises(InputError, match=r"\(8, 6\)"):
        blender.add(torch.zeros(1, 3, 21, 8, 6))
    with pytest.raises(InputError, match="overlap of 9"):
        blender.add(torch.zeros(1, 3, 5, 4, 6))
    short = SectionBlender("inverted", OVERLAP)
    short.add(torch.zeros(3, 4, 4, 6))
    with pytest.raises(InputError, match="only 4"):
        short.add(torch.zeros(3, 21, 4, 6))
