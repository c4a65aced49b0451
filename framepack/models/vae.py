"""HunyuanVideo causal 3D VAE (``hunyuanvideo-community/HunyuanVideo``, subfolder ``vae``).

Pixels [B, 3, 1+4k, H, W] in [-1, 1] ↔ scaled latents [B, 16, 1+k, H/8, W/8]. Frame 0 is
encoded alone (the causal pad replicates it); every later latent frame summarises 4 pixel
frames. Encode and decode follow the reference's dispatch (diffusers 0.33.1, the version
FramePack pins): clips longer than the temporal tile are always processed in overlapping
temporal tiles, and with a ``tiling`` argument large frames also go through spatial tiles.
Without one, frames too large for an untiled pass (``MAX_UNTILED_ELEMENTS``) are tiled anyway.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import ClassVar, Literal

import torch

from ..errors import ConfigError, InputError
from .configuration import ModelConfig
from .loading import KeyRule, PretrainedModel, key_rule
from .vae_blocks import Decoder, Encoder, resample_factors
from .vae_tiling import TilingArg, VAETiling, as_tiling, spatial_tiled, temporal_tiled

__all__ = ["MAX_UNTILED_ELEMENTS", "HunyuanVideoVAE", "VAEConfig", "VAETiling"]

logger = logging.getLogger("framepack")

# The most elements one activation of an untiled encode or decode may have; above it the pass
# is tiled spatially with the reference's tiles. CUDA kernels index with int32 in places, so a
# tensor of 2**31 elements breaks them; the peak is counted exactly (``_decode_peak``), and
# 1/16 is left for buffers it does not count. The 640 buckets peak at 1.96e9 (416x960: 256
# channels x 19 padded frames x 418 x 962), under it, so they decode untiled as the reference
# does; 672 px buckets reach 2.2e9 and are tiled.
MAX_UNTILED_ELEMENTS = 2**31 - 2**27

_DOWN_BLOCK = "HunyuanVideoDownBlock3D"
_UP_BLOCK = "HunyuanVideoUpBlock3D"


@dataclasses.dataclass(frozen=True)
class VAEConfig(ModelConfig):
    """The fields of the checkpoint's ``vae/config.json``; defaults are the real checkpoint's."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    down_block_types: tuple[str, ...] = (_DOWN_BLOCK,) * 4
    up_block_types: tuple[str, ...] = (_UP_BLOCK,) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.476986
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        blocks = len(self.block_out_channels)
        if self.down_block_types != (_DOWN_BLOCK,) * blocks or self.up_block_types != (_UP_BLOCK,) * blocks:
            raise ConfigError(
                f"VAEConfig: expected {blocks} × {_DOWN_BLOCK!r} and {blocks} × {_UP_BLOCK!r} (one per entry of "
                f"block_out_channels); got {list(self.down_block_types)} and {list(self.up_block_types)}"
            )
        if self.act_fn not in ("silu", "swish"):
            raise ConfigError(f"VAEConfig: act_fn must be 'silu' (its alias 'swish'), got {self.act_fn!r}")
        if self.temporal_compression_ratio != 4:
            raise ConfigError(
                f"VAEConfig: the decoder exists only for temporal_compression_ratio 4, got {self.temporal_compression_ratio}"
            )
        ratio = self.spatial_compression_ratio
        if ratio < 1 or ratio & (ratio - 1) or ratio.bit_length() - 1 > blocks:
            raise ConfigError(
                f"VAEConfig: spatial_compression_ratio must be a power of two up to 2**{blocks}, got {ratio}"
            )
        if blocks < 3:
            raise ConfigError(f"VAEConfig: temporal ×4 needs at least 3 blocks, got block_out_channels {blocks}")
        bad = [c for c in self.block_out_channels if c <= 0 or c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"VAEConfig: every block_out_channels entry must be a positive multiple of norm_num_groups "
                f"({self.norm_num_groups}); got {list(self.block_out_channels)}"
            )

    @classmethod
    def preset(cls, name: Literal["hunyuan", "tiny"]) -> VAEConfig:
        """``hunyuan``: the real checkpoint. ``tiny``: same layout, a few channels, for tests and the offline demo.

        The tiny VAE keeps 16 latent channels because the transformer takes 16.
        """
        if name == "hunyuan":
            return cls()
        if name == "tiny":
            return cls(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=4)
        raise ConfigError(f"unknown VAE preset {name!r}; choose 'hunyuan' or 'tiny'")


# Our module paths -> the checkpoint's (diffusers' AutoencoderKLHunyuanVideo); the rest are the same.
CHECKPOINT_KEYS = (key_rule("*.mid_block.attentions.*.out_proj", "*.mid_block.attentions.*.to_out.0"),)


class HunyuanVideoVAE(PretrainedModel):
    """The causal 3D VAE. ``encode``/``decode`` speak scaled latents, the unit the pipeline uses."""

    config_class: ClassVar[type[ModelConfig]] = VAEConfig
    weights_name: ClassVar[str] = "diffusion_pytorch_model"

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        factors = resample_factors(
            len(config.block_out_channels), config.spatial_compression_ratio, config.temporal_compression_ratio
        )
        self._factors = factors
        self._told_forced_tiling = False  # the forced-tiling message is logged once per VAE
        shape = dict(
            widths=config.block_out_channels,
            layers=config.layers_per_block,
            groups=config.norm_num_groups,
            add_attention=config.mid_block_add_attention,
            factors=factors,
        )
        self.encoder = Encoder(config.in_channels, config.latent_channels, **shape)
        self.decoder = Decoder(config.latent_channels, config.out_channels, **shape)
        self.quant_conv = torch.nn.Conv3d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = torch.nn.Conv3d(config.latent_channels, config.latent_channels, 1)

    def checkpoint_keys(self) -> Sequence[KeyRule]:
        return CHECKPOINT_KEYS

    # ---- encode -------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        pixels: torch.Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tiling: TilingArg = None,
    ) -> torch.Tensor:
        """Pixels [B, 3, 1+4k, H, W] in [-1, 1] → scaled latents [B, 16, 1+k, H/8, W/8], float32.

        The posterior mean, or with ``sample=True`` a draw ``mean + std·ε`` with ε from
        ``generator`` (drawn as diffusers' DiagonalGaussianDistribution.sample does). Without
        ``tiling``, clips of more than 16 frames are encoded in temporal tiles (the reference
        default); with it, frames larger than the tile are also tiled spatially.
        """
        self._check_pixels(pixels)
        settings = as_tiling(tiling)
        if settings is None:
            settings = self._tiling_if_too_large("encode", pixels.shape)
        moments = self._encode_moments(pixels.to(self.device, self.dtype), settings)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        latents = mean
        if sample:
            std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
            latents = mean + std * _standard_normal(mean.shape, generator, moments.device, moments.dtype)
        return (latents * self.config.scaling_factor).float()

    def _encode_moments(self, x: torch.Tensor, tiling: VAETiling | None) -> torch.Tensor:
        spatial_tiling = tiling is not None
        t = tiling or VAETiling()
        t.check(self.config.spatial_compression_ratio, self.config.temporal_compression_ratio)
        s, r = self.config.spatial_compression_ratio, self.config.temporal_compression_ratio
        height, width = x.shape[-2:]

        def run_frames(clip: torch.Tensor) -> torch.Tensor:
            if spatial_tiling and (height > t.tile_sample_min_height or width > t.tile_sample_min_width):
                return spatial_tiled(
                    clip,
                    self._encode_tile,
                    tile_in=(t.tile_sample_min_height, t.tile_sample_min_width),
                    stride_in=(t.tile_sample_stride_height, t.tile_sample_stride_width),
                    blend_out=(
                        (t.tile_sample_min_height - t.tile_sample_stride_height) // s,
                        (t.tile_sample_min_width - t.tile_sample_stride_width) // s,
                    ),
                    stride_out=(t.tile_sample_stride_height // s, t.tile_sample_stride_width // s),
                    out_size=(height // s, width // s),
                )
            return self._encode_tile(clip)

        if x.shape[2] <= t.tile_sample_min_num_frames:
            return run_frames(x)
        chunks = temporal_tiled(
            x,
            run_frames,
            tile_in=t.tile_sample_min_num_frames,
            stride_in=t.tile_sample_stride_num_frames,
            blend_out=(t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames) // r,
            stride_out=t.tile_sample_stride_num_frames // r,
            out_frames=(x.shape[2] - 1) // r + 1,
        )
        return torch.cat(list(chunks), dim=2)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    # ---- decode -------------------------------------------------------------------------

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, *, tiling: TilingArg = None, out_device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Scaled latents [B, 16, T, h, w] → pixels [B, 3, 4T−3, 8h, 8w], float32, nominally in [-1, 1] (not clamped).

        Same numbers as the reference's decode; built from ``decode_frames``' chunks, so the
        working memory is one tile's plus the output. The output is on ``out_device`` (default:
        the VAE's): with ``"cpu"`` each chunk goes to the host as soon as it is finished, so the
        VAE's device holds one temporal chunk at a time, never the whole video.
        """
        out: torch.Tensor | None = None
        written = 0
        for chunk in self.decode_frames(latents, tiling=tiling):
            if out is None:
                b, c, _, height, width = chunk.shape
                frames = self.config.temporal_compression_ratio * (latents.shape[2] - 1) + 1
                device = chunk.device if out_device is None else out_device
                out = torch.empty(b, c, frames, height, width, dtype=chunk.dtype, device=device)
            out[:, :, written : written + chunk.shape[2]] = chunk
            written += chunk.shape[2]
            del chunk  # the next chunk is decoded while nothing refers to this one
        assert out is not None and written == out.shape[2]  # every latent frame yields its pixel frames
        return out

    def decode_frames(self, latents: torch.Tensor, *, tiling: TilingArg = None) -> Iterator[torch.Tensor]:
        """Yield the decoded video as finished float32 chunks [B, 3, t_i, 8h, 8w] along time, in order.

        Latents longer than the temporal tile (4 latent frames by default) are decoded in
        overlapping temporal tiles; each chunk is final when yielded (already blended with
        the previous tile's tail, the only thing kept between chunks). With ``tiling``,
        large frames are also decoded in spatial tiles.
        """
        self._check_latents(latents)
        settings = as_tiling(tiling)
        if settings is None:
            settings = self._tiling_if_too_large("decode", latents.shape)
        spatial_tiling = settings is not None
        t = settings or VAETiling()
        t.check(self.config.spatial_compression_ratio, self.config.temporal_compression_ratio)
        s, r = self.config.spatial_compression_ratio, self.config.temporal_compression_ratio
        # Not decorated with torch.no_grad: its generator wrapper would keep the last chunk alive
        # while the next one decodes. The tiles run under no_grad in _decode_tile instead.
        with torch.no_grad():
            z = (latents / self.config.scaling_factor).to(self.device, self.dtype)
        min_h, min_w = t.tile_sample_min_height // s, t.tile_sample_min_width // s

        def run_spatial(tile: torch.Tensor) -> torch.Tensor:
            return spatial_tiled(
                tile,
                self._decode_tile,
                tile_in=(min_h, min_w),
                stride_in=(t.tile_sample_stride_height // s, t.tile_sample_stride_width // s),
                blend_out=(
                    t.tile_sample_min_height - t.tile_sample_stride_height,
                    t.tile_sample_min_width - t.tile_sample_stride_width,
                ),
                stride_out=(t.tile_sample_stride_height, t.tile_sample_stride_width),
                out_size=(tile.shape[-2] * s, tile.shape[-1] * s),
            )

        def run_frames(tile: torch.Tensor) -> torch.Tensor:
            if spatial_tiling and (tile.shape[-1] > min_w or tile.shape[-2] > min_h):
                return run_spatial(tile)
            return self._decode_tile(tile)

        if z.shape[2] > t.tile_sample_min_num_frames // r:
            chunks = temporal_tiled(
                z,
                run_frames,
                tile_in=t.tile_sample_min_num_frames // r,
                stride_in=t.tile_sample_stride_num_frames // r,
                blend_out=t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames,
                stride_out=t.tile_sample_stride_num_frames,
                out_frames=r * (z.shape[2] - 1) + 1,
            )
            yield from map(torch.Tensor.float, chunks)  # map keeps no chunk alive once it is yielded
        # diffusers 0.33.1 (FramePack's pin) compares the latent *width* with the spatial
        # stride, not the tile (0.42.1 uses the tile): a width in (stride/8, tile/8] is tiled here.
        elif spatial_tiling and (z.shape[-1] > t.tile_sample_stride_width // s or z.shape[-2] > min_h):
            yield run_spatial(z).float()
        else:
            yield self._decode_tile(z).float()

    @torch.no_grad()
    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    # ---- untiled passes too large for int32 indexing --------------------------------------

    def _tiling_if_too_large(self, what: Literal["encode", "decode"], shape: torch.Size) -> VAETiling | None:
        """None when an untiled pass over ``shape`` peaks within ``MAX_UNTILED_ELEMENTS``, else default tiles."""
        # An untiled pass still runs in temporal tiles of tile_sample_min_num_frames + 1 pixel frames.
        frames = VAETiling().tile_sample_min_num_frames
        if what == "decode":
            frames //= self.config.temporal_compression_ratio
        tile = (*shape[:2], min(shape[2], frames + 1), *shape[3:])
        peak = self._decode_peak(tile) if what == "decode" else self._encode_peak(tile)
        if peak <= MAX_UNTILED_ELEMENTS:
            return None
        if not self._told_forced_tiling:
            logger.info(
                "VAE %s: tiling spatially, as an untiled pass would make a %.3g-element activation "
                "(over %.3g: CUDA kernels index some tensors with int32)",
                what,
                peak,
                MAX_UNTILED_ELEMENTS,
            )
            self._told_forced_tiling = True
        return VAETiling()

    def _decode_peak(self, shape: tuple[int, ...]) -> int:
        """Elements of the largest activation the decoder makes from latents of ``shape`` [B, C, T, h, w]."""
        batch, _, t, h, w = shape
        widths = self.config.block_out_channels[::-1]
        peak = max(_conv_peak(self.config.latent_channels, widths[0], t, h, w), _mid_block_peak(widths[0], t, h, w))
        for i, factor in enumerate(self._factors):
            width = max(widths[max(i - 1, 0)], widths[i])  # the block's first resnet reads the previous width
            peak = max(peak, _conv_peak(width, width, t, h, w))
            if factor is not None:  # nearest upsampling keeps frame 0 single, then a conv at the new size
                t, h, w = 1 + factor[0] * (t - 1), h * factor[1], w * factor[2]
                peak = max(peak, _conv_peak(widths[i], widths[i], t, h, w))
        return batch * max(peak, _conv_peak(widths[-1], self.config.out_channels, t, h, w))

    def _encode_peak(self, shape: tuple[int, ...]) -> int:
        """Elements of the largest activation the encoder makes from pixels of ``shape`` [B, 3, F, H, W]."""
        batch, _, t, h, w = shape
        widths = self.config.block_out_channels
        peak = _conv_peak(self.config.in_channels, widths[0], t, h, w)
        for i, factor in enumerate(self._factors):
            width = max(widths[max(i - 1, 0)], widths[i])
            peak = max(peak, _conv_peak(width, width, t, h, w))
            if factor is not None:  # a strided conv reads the padded input at the old size
                t, h, w = ((size - 1) // f + 1 for size, f in zip((t, h, w), factor))
        peak = max(peak, _mid_block_peak(widths[-1], t, h, w))
        return batch * max(peak, _conv_peak(widths[-1], 2 * self.config.latent_channels, t, h, w))

    # ---- input checks -------------------------------------------------------------------

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        c, s, r = self.config.in_channels, self.config.spatial_compression_ratio, self.config.temporal_compression_ratio
        expected = f"pixels [B, {c}, 1+{r}k, H, W] (H, W positive multiples of {s}), floating point in [-1, 1]"
        if not isinstance(pixels, torch.Tensor):
            raise InputError(f"encode expects a tensor of {expected}; got {type(pixels).__name__}")
        shape = tuple(pixels.shape)
        if pixels.ndim != 5 or not pixels.is_floating_point():
            raise InputError(f"encode expects {expected}; got {pixels.dtype} of shape {shape}")
        b, channels, frames, height, width = shape
        if b < 1 or channels != c:
            raise InputError(f"encode expects {expected}; got {channels} channels (shape {shape})")
        if frames < 1 or (frames - 1) % r:
            raise InputError(
                f"encode expects 1 + {r}k frames (1, {1 + r}, {1 + 2 * r}, …); got {frames} (shape {shape})"
            )
        if height < 1 or width < 1 or height % s or width % s:
            raise InputError(f"encode expects height and width that are positive multiples of {s}; got shape {shape}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        c = self.config.latent_channels
        expected = f"scaled latents [B, {c}, T, h, w] with B, T, h, w ≥ 1, floating point"
        if not isinstance(latents, torch.Tensor):
            raise InputError(f"decode expects a tensor of {expected}; got {type(latents).__name__}")
        shape = tuple(latents.shape)
        if latents.ndim != 5 or not latents.is_floating_point() or shape[1] != c or min(shape) < 1:
            raise InputError(f"decode expects {expected}; got {latents.dtype} of shape {shape}")


def _conv_peak(in_channels: int, out_channels: int, t: int, h: int, w: int) -> int:
    """The larger of a 3×3×3 causal conv's padded input (2 frames in front, 1 pixel around) and its output."""
    return max(in_channels * (t + 2) * (h + 2) * (w + 2), out_channels * t * h * w)


def _mid_block_peak(channels: int, t: int, h: int, w: int) -> int:
    """The mid block's resnets, and its attention's scores should they be materialised (the last frame sees all)."""
    return max(_conv_peak(channels, channels, t, h, w), h * w * t * h * w)


def _standard_normal(
    shape: torch.Size, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """ε as diffusers' randn_tensor draws it: on the generator's CPU when it is a CPU one, then moved."""
    draw_device = torch.device("cpu") if generator is not None and generator.device.type == "cpu" else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)
