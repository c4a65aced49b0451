"""Spatial and temporal tiling of the VAE, with the reference's tile sizes, overlaps and blends.

The reference (diffusers ``AutoencoderKLHunyuanVideo``) runs every tile, keeps them all,
then blends each tile *in place* with its already-blended upper, left or previous
neighbour and keeps its top-left (or leading) part. The functions here produce the same
numbers while holding only what a later blend still reads: the bottom strips of the row
of tiles above, the right strip of the tile to the left, and the tail of the previous
temporal tile. Finished temporal chunks are yielded as soon as they are final.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from ..errors import ConfigError

TileFn = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class VAETiling:
    """Tile sizes and strides in *pixel* units, named as diffusers' ``enable_tiling`` arguments.

    The defaults are the reference's. Latent tile sizes are these divided by the
    compression ratios (8 spatially, 4 in time), so every value must be a multiple of
    its ratio, and a stride may not exceed its tile (tiles must overlap or touch).
    """

    tile_sample_min_height: int = 256
    tile_sample_min_width: int = 256
    tile_sample_min_num_frames: int = 16
    tile_sample_stride_height: int = 192
    tile_sample_stride_width: int = 192
    tile_sample_stride_num_frames: int = 12

    def check(self, spatial_ratio: int, temporal_ratio: int) -> None:
        for name, ratio in [
            ("tile_sample_min_height", spatial_ratio),
            ("tile_sample_min_width", spatial_ratio),
            ("tile_sample_stride_height", spatial_ratio),
            ("tile_sample_stride_width", spatial_ratio),
            ("tile_sample_min_num_frames", temporal_ratio),
            ("tile_sample_stride_num_frames", temporal_ratio),
        ]:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % ratio:
                raise ConfigError(f"VAETiling.{name} must be a positive multiple of {ratio}, got {value!r}")
        for axis in ("height", "width", "num_frames"):
            size, stride = getattr(self, f"tile_sample_min_{axis}"), getattr(self, f"tile_sample_stride_{axis}")
            if stride > size:
                raise ConfigError(
                    f"VAETiling: tile_sample_stride_{axis} ({stride}) must not exceed tile_sample_min_{axis} ({size})"
                )


TilingArg = VAETiling | Mapping[str, Any] | None


def as_tiling(tiling: TilingArg) -> VAETiling | None:
    """A ``VAETiling`` from itself, a dict of its field names (others default), or None."""
    if tiling is None or isinstance(tiling, VAETiling):
        return tiling
    if isinstance(tiling, Mapping):
        names = {f.name for f in dataclasses.fields(VAETiling)}
        unknown = sorted(set(tiling) - names)
        if unknown:
            raise ConfigError(f"unknown tiling key(s) {unknown}; accepted keys are {sorted(names)}")
        return VAETiling(**tiling)
    raise ConfigError(f"tiling must be a VAETiling, a dict of its fields, or None; got {type(tiling).__name__}")


def blend_into(a_tail: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> None:
    """The reference's blend_v/h/t: ramp the first ``extent`` slices of ``b`` from ``a``'s last ones, in place.

    ``a_tail`` may be just the last slices of the neighbour (at least ``extent`` of them
    when it has that many). Slice by slice with Python-float weights, as the reference,
    so half precision rounds the same way.
    """
    extent = min(a_tail.shape[dim], b.shape[dim], extent)
    for i in range(extent):
        b_i = b.select(dim, i)
        a_i = a_tail.select(dim, a_tail.shape[dim] - extent + i)
        b_i.copy_(a_i * (1 - i / extent) + b_i * (i / extent))


def spatial_tiled(
    x: torch.Tensor,
    run_tile: TileFn,
    *,
    tile_in: tuple[int, int],
    stride_in: tuple[int, int],
    blend_out: tuple[int, int],
    stride_out: tuple[int, int],
    out_size: tuple[int, int],
) -> torch.Tensor:
    """Run ``run_tile`` on overlapping H×W tiles of ``x`` and stitch the outputs as the reference does.

    Tiles of ``tile_in`` start every ``stride_in`` input pixels; output tile (i, j) is
    blended with the (already blended) tile above over ``blend_out[0]`` rows, then with the
    tile to its left over ``blend_out[1]`` columns, and its first ``stride_out`` rows and
    columns are written at (i·stride_out[0], j·stride_out[1]) of an output cropped to ``out_size``.
    """
    height, width = x.shape[-2:]
    out: torch.Tensor | None = None
    above_tails: list[torch.Tensor] = []
    for row, top in enumerate(range(0, height, stride_in[0])):
        row_tails: list[torch.Tensor] = []
        left_tail: torch.Tensor | None = None
        for col, left in enumerate(range(0, width, stride_in[1])):
            tile = run_tile(x[..., top : top + tile_in[0], left : left + tile_in[1]])
            if out is None:
                out = tile.new_empty(*tile.shape[:-2], *out_size)
            if row > 0:
                blend_into(above_tails[col], tile, blend_out[0], dim=-2)
            if left_tail is not None:
                blend_into(left_tail, tile, blend_out[1], dim=-1)
            # What later tiles will read of this one, after its own blends (the reference blends in place).
            row_tails.append(tile[..., -blend_out[0] :, :].clone() if blend_out[0] else tile[..., :0, :])
            left_tail = tile[..., -blend_out[1] :].clone() if blend_out[1] else tile[..., :0]
            y, x0 = row * stride_out[0], col * stride_out[1]
            kept = tile[..., : stride_out[0], : stride_out[1]]
            kept = kept[..., : max(out_size[0] - y, 0), : max(out_size[1] - x0, 0)]
            out[..., y : y + kept.shape[-2], x0 : x0 + kept.shape[-1]] = kept
        above_tails = row_tails
    assert out is not None  # height and width are positive, so there was at least one tile
    return out


def temporal_tiled(
    x: torch.Tensor,
    run_tile: TileFn,
    *,
    tile_in: int,
    stride_in: int,
    blend_out: int,
    stride_out: int,
    out_frames: int,
) -> Iterator[torch.Tensor]:
    """Yield, in order, the finished frame chunks of the reference's temporal tiling.

    Tile n covers input frames [n·stride_in, n·stride_in + tile_in]; its first output
    frame (a restart of the causal chain) is dropped for n > 0. Tile n > 0 is blended
    with the tail of tile n−1 over ``blend_out`` frames and keeps ``stride_out`` frames;
    tile 0 keeps ``stride_out + 1``. Chunks stop at ``out_frames`` in total.
    """
    tail: torch.Tensor | None = None
    emitted = 0
    for n, start in enumerate(range(0, x.shape[2], stride_in)):
        tile = run_tile(x[:, :, start : start + tile_in + 1])
        if n > 0:
            tile = tile[:, :, 1:]
            blend_into(tail, tile, blend_out, dim=2)
        tail = tile[:, :, -blend_out:].clone() if blend_out else tile[:, :, :0]
        kept = tile[:, :, : max(min(stride_out + (n == 0), out_frames - emitted), 0)]
        if kept.shape[2]:
            emitted += kept.shape[2]
            yield kept
        del tile, kept  # while the next tile runs, the caller alone decides whether this chunk lives
