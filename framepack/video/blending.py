"""Join decoded sections into one video as the reference's ``soft_append_bcthw`` does, streaming.

The reference keeps every decoded frame as a float tensor and re-blends the whole history
each section. Only the ``overlap`` frames at the growing end can ever be blended again, so we
keep just those as float32 and hand out every other frame as finished uint8 (converted
exactly like ``save_bcthw_as_mp4``). Finished frames are the reference's final frames bit
for bit when both compute in float32; the demos keep their history in float16, so their
blends are float16-rounded (at most one uint8 level apart from ours).

Modes (as the reference demos, demo_gradio.py and demo_gradio_f1.py, blend):
- ``forward`` (F1): each section goes after the video; its first ``overlap`` frames blend with
  the video's last ``overlap`` (weights of the old frames 1 -> 0).
- ``inverted`` (anti-drifting): each section goes *before* the video; its last ``overlap``
  frames blend with the video's first ``overlap`` (weights of the new frames 1 -> 0). The video
  is finished back to front, so finished chunks arrive in reverse temporal order.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from ..atomic import replacing
from ..errors import ConfigError, InputError
from .mp4 import write_mp4

BLEND_MODES = ("forward", "inverted")


def pixels_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Float pixels [3, t, H, W] in [-1, 1] -> uint8 [t, H, W, 3], exactly the reference's
    ``x.float().clamp(-1, 1) * 127.5 + 127.5`` then ``.to(uint8)`` (truncation)."""
    scaled = pixels.float().clamp(-1, 1) * 127.5 + 127.5
    return scaled.to(torch.uint8).cpu().permute(1, 2, 3, 0).contiguous().numpy()


class SectionBlender:
    """Blend decoded sections as they come; keep only the frames a later section can touch.

    ``add`` returns the frames that became final, as uint8 [n, H, W, 3] in temporal order
    within the chunk; ``finish`` returns the rest. In ``inverted`` mode each chunk belongs
    before every chunk returned earlier.
    """

    def __init__(self, mode: str, overlap: int) -> None:
        if mode not in BLEND_MODES:
            raise ConfigError(f"blend mode must be one of {BLEND_MODES}; got {mode!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise ConfigError(f"overlap must be a non-negative int (4 * window - 3 in FramePack); got {overlap!r}")
        self.mode = mode
        self.overlap = overlap
        self.frame_count = 0
        self._held: torch.Tensor | None = None  # float32 [3, <=overlap, H, W]: the growing end
        self._finished = False

    def add(self, section: torch.Tensor) -> np.ndarray:
        """Take one decoded section ([1, 3, t, H, W] or [3, t, H, W], float in [-1, 1])."""
        if self._finished:
            raise InputError("this blender is finished; start a new one for a new video")
        section = self._check_section(section)
        if self._held is None:
            joined = section
            self.frame_count = section.shape[1]
        else:
            joined = self._blend(section)
            self.frame_count += section.shape[1] - self.overlap
        keep = min(self.overlap, joined.shape[1])
        if self.mode == "forward":
            finished, held = joined[:, : joined.shape[1] - keep], joined[:, joined.shape[1] - keep :]
        else:
            held, finished = joined[:, :keep], joined[:, keep:]
        self._held = held.clone()  # drop the reference to the rest of the section
        return pixels_to_uint8(finished)

    def held_frames(self) -> np.ndarray:
        """The frames not yet final, as uint8 [n, H, W, 3] (what the video shows right now)."""
        if self._held is None:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        return pixels_to_uint8(self._held)

    def held(self) -> torch.Tensor | None:
        """The float32 frames [3, n, H, W] still waiting for a blend (None before the first section)."""
        return self._held

    def restore(self, held: torch.Tensor | None, frame_count: int) -> None:
        """Continue a video whose blender had ``held`` frames after ``frame_count`` frames (resuming)."""
        self._held = None if held is None else held.detach().to(device="cpu", dtype=torch.float32).clone()
        self.frame_count = frame_count

    def finish(self) -> np.ndarray:
        """Return the held frames as final (uint8 [n, H, W, 3]) and accept no more sections."""
        frames = self.held_frames()
        self._held = None
        self._finished = True
        return frames

    def _blend(self, section: torch.Tensor) -> torch.Tensor:
        overlap, held = self.overlap, self._held
        if overlap == 0:
            return section
        if held.shape[1] < overlap:
            raise InputError(f"cannot blend {overlap} frames: the video so far has only {held.shape[1]}")
        weights = torch.linspace(1, 0, overlap, dtype=torch.float32).view(1, overlap, 1, 1)
        if self.mode == "forward":
            # soft_append(video, section): video's tail fades out, section's head fades in.
            blended = weights * held + (1 - weights) * section[:, :overlap]
            return torch.cat([blended, section[:, overlap:]], dim=1)
        # soft_append(section, video): section's tail fades out, video's head fades in.
        blended = weights * section[:, -overlap:] + (1 - weights) * held
        return torch.cat([section[:, :-overlap], blended], dim=1)

    def _check_section(self, section: torch.Tensor) -> torch.Tensor:
        if not isinstance(section, torch.Tensor) or not section.is_floating_point():
            got = f"{section.dtype} tensor" if isinstance(section, torch.Tensor) else type(section).__name__
            raise InputError(f"a decoded section must be a float tensor in [-1, 1]; got {got}")
        given = tuple(section.shape)
        if section.ndim == 5:
            if section.shape[0] != 1:
                raise InputError(f"decoded sections must have batch size 1; got shape {given}")
            section = section[0]
        if section.ndim != 4 or section.shape[0] != 3 or 0 in section.shape:
            raise InputError(f"a decoded section must be [1, 3, t, H, W] or [3, t, H, W] with t, H, W > 0; got {given}")
        if self._held is not None:
            if section.shape[2:] != self._held.shape[2:]:
                frame_size, video_size = tuple(section.shape[2:]), tuple(self._held.shape[2:])
                raise InputError(f"section frames are {frame_size} (H, W) but the video is {video_size}")
            if section.shape[1] < self.overlap:
                raise InputError(f"a section of {section.shape[1]} frames cannot cover an overlap of {self.overlap}")
        return section.detach().to(device="cpu", dtype=torch.float32)


def chunk_name(index: int) -> str:
    """The file name of the ``index``-th finished-frame chunk (generation order)."""
    return f"chunk_{index:05d}.npy"


class FrameAssembler:
    """A whole video built section by section with flat host memory.

    Finished frames go to ``.npy`` chunk files in ``spool_dir`` (a private temporary
    directory, deleted on ``close``, when None); only the overlap stays in memory as float.
    ``frames()`` streams the video so far in temporal order at any time, so a caller can
    write a preview mp4 after each section, as the official app does, and the final one at the end.
    """

    def __init__(self, mode: str, overlap: int, spool_dir: str | Path | None = None) -> None:
        self._blender = SectionBlender(mode, overlap)
        self._owns_spool = spool_dir is None
        self.spool_dir = Path(tempfile.mkdtemp(prefix="framepack-frames-") if spool_dir is None else spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._chunks: list[Path] = []  # generation order

    def __len__(self) -> int:
        return self._blender.frame_count

    def add(self, section: torch.Tensor) -> None:
        """Blend one decoded section in ([1, 3, t, H, W] or [3, t, H, W], float in [-1, 1])."""
        finished = self._blender.add(section)
        if len(finished):
            chunk = self.spool_dir / chunk_name(len(self._chunks))
            with replacing(chunk) as temp:  # a full disk leaves no truncated chunk (OutputError)
                np.save(temp, finished)
            self._chunks.append(chunk)

    @property
    def chunk_names(self) -> list[str]:
        """Names of the finished-frame chunk files in ``spool_dir``, in generation order."""
        return [chunk.name for chunk in self._chunks]

    @property
    def held(self) -> torch.Tensor | None:
        """The float32 frames still waiting for a blend (see ``SectionBlender.held``)."""
        return self._blender.held()

    def restore(self, held: torch.Tensor | None, frame_count: int, chunk_names: list[str]) -> None:
        """Continue from a saved state: the chunk files already in ``spool_dir`` and the held frames.

        Every chunk must be there and readable, and with the held frames hold ``frame_count``
        frames: a state that disagrees with the files would "resume" to a video that is not
        the one it reports.
        """
        size = None if held is None else tuple(held.shape[2:])
        counted = 0 if held is None else held.shape[1]
        for name in chunk_names:
            chunk = self._read_chunk(self.spool_dir / name, size)
            size, counted = chunk.shape[1:3], counted + len(chunk)
        if counted != frame_count:
            raise InputError(
                f"cannot resume the video in {self.spool_dir}: the run state counts {frame_count} frames, "
                f"but its {len(chunk_names)} frame chunk(s) and held frames hold {counted}"
            )
        self._blender.restore(held, frame_count)
        self._chunks = [self.spool_dir / name for name in chunk_names]

    @staticmethod
    def _read_chunk(path: Path, size: tuple[int, ...] | None) -> np.ndarray:
        """A saved chunk, memory-mapped: uint8 [n, H, W, 3], H x W as ``size`` when given."""
        try:
            chunk = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"cannot resume: the frame chunk {path} is missing") from None
        except (OSError, ValueError) as error:
            raise InputError(f"cannot resume: the frame chunk {path} is not a readable .npy file ({error})") from error
        expected = f"{size[0]}x{size[1]}" if size is not None else "HxW"
        if (
            chunk.dtype != np.uint8
            or chunk.ndim != 4
            or chunk.shape[3] != 3
            or (size is not None and chunk.shape[1:3] != size)
        ):
            raise InputError(
                f"cannot resume: the frame chunk {path} should hold uint8 frames [n, {expected}, 3]; "
                f"it holds {chunk.dtype} {list(chunk.shape)}"
            )
        return chunk

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame so far, uint8 (H, W, 3), in temporal order, read one chunk at a time.

        The frames are those of the call's moment: sections added while the iterator is
        still being read (say, by a preview encoder on another thread) do not change them.
        """
        chunks, held = list(self._chunks), self._blender.held_frames()
        if self._blender.mode == "forward":
            return itertools.chain(self._chunk_frames(chunks), held)
        # The held head comes first; chunks were finished back to front.
        return itertools.chain(held, self._chunk_frames(chunks[::-1]))

    def write_mp4(
        self, path: str | Path, fps: float = 30, crf: int = 16, *, metadata: Mapping[str, str] | None = None
    ) -> Path:
        """Write the video so far to an mp4 (see Mp4Writer, also for ``metadata``); returns the path."""
        return write_mp4(path, self.frames(), fps=fps, crf=crf, metadata=metadata)

    @staticmethod
    def _chunk_frames(chunks: list[Path]) -> Iterator[np.ndarray]:
        for chunk in chunks:
            yield from np.load(chunk, mmap_mode="r")

    def close(self) -> None:
        """Forget the video; delete the spool directory if this assembler created it."""
        if self._owns_spool:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
        self._chunks = []

    def __enter__(self) -> FrameAssembler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
