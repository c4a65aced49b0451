"""HunyuanVideoVAE against diffusers' AutoencoderKLHunyuanVideo on a tiny random checkpoint."""

from __future__ import annotations

import importlib.util
import json
import logging
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from framepack.errors import ConfigError, InputError
from framepack.models import vae as vae_module
from framepack.models.vae import HunyuanVideoVAE, VAEConfig, VAETiling
from framepack.models.vae_preview import decode_preview

# Checked, not imported: importing diffusers takes seconds, which only the reference fixtures need.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="the reference needs diffusers")

TINY = dict(
    block_out_channels=[8, 8, 16, 16],
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=16,
)
# Small tiles so that several spatial tiles and temporal chunks occur on tiny inputs:
# latent tile 4 px / stride 2 px spatially, 2 latent frames / stride 1 temporally.
SMALL_TILES = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=32,
    tile_sample_min_num_frames=8,
    tile_sample_stride_height=16,
    tile_sample_stride_width=16,
    tile_sample_stride_num_frames=4,
)
DEFAULT_TILES = dict(
    tile_sample_min_height=256,
    tile_sample_min_width=256,
    tile_sample_min_num_frames=16,
    tile_sample_stride_height=192,
    tile_sample_stride_width=192,
    tile_sample_stride_num_frames=12,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    reference = AutoencoderKLHunyuanVideo(**TINY)
    with torch.no_grad():
        for p in reference.parameters():  # no default init left (GroupNorm ones / zeros included)
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5))
    folder = tmp_path_factory.mktemp("vae")
    reference.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def ours(checkpoint: Path) -> HunyuanVideoVAE:
    return HunyuanVideoVAE.from_pretrained(checkpoint)


def set_tiling(reference: torch.nn.Module, tiles: dict | None) -> None:
    """The reference's tiling state: enable_tiling(**tiles), or its constructor defaults for None."""
    for name, value in (tiles or DEFAULT_TILES).items():
        setattr(reference, name, value)
    reference.use_tiling = tiles is not None
    reference.use_framewise_encoding = reference.use_framewise_decoding = True


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == torch.float32
    err = (ours - ref).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref.abs().max().item()), err


def pixels(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1


def latents(frames: int, height: int, width: int, seed: int = 2, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, height, width, generator=g)


def ref_encode(reference: torch.nn.Module, x: torch.Tensor, tiles: dict | None = None) -> torch.Tensor:
    set_tiling(reference, tiles)
    with torch.no_grad():
        return reference.encode(x).latent_dist.mode() * reference.config.scaling_factor


def ref_decode(reference: torch.nn.Module, z: torch.Tensor, tiles: dict | None = None) -> torch.Tensor:
    set_tiling(reference, tiles)
    with torch.no_grad():
        return reference.decode(z / reference.config.scaling_factor).sample


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_matches_reference(reference, ours, frames: int) -> None:
    x = pixels(frames, 16, 24)
    got = ours.encode(x)
    assert got.shape == (1, 16, (frames - 1) // 4 + 1, 2, 3)
    assert_close(got, ref_encode(reference, x))


@pytest.mark.parametrize("frames", [1, 3])
def test_decode_matches_reference(reference, ours, frames: int) -> None:
    z = latents(frames, 2, 3)
    got = ours.decode(z)
    assert got.shape == (1, 3, 4 * frames - 3, 16, 24)
    assert_close(got, ref_decode(reference, z))


def test_default_decode_splits_long_clips_in_time_like_reference(reference, ours) -> None:
    # 7 latent frames > 4: temporal tiles at 0, 3 and 6 (the last one adds no frame).
    z = latents(7, 1, 1, batch=2)
    got = ours.decode(z)
    assert_close(got, ref_decode(reference, z))
    chunks = list(ours.decode_frames(z))
    assert [c.shape[2] for c in chunks] == [13, 12]
    assert torch.equal(torch.cat(chunks, dim=2), got)


def test_tiled_decode_matches_reference(reference, ours) -> None:
    # 3 latent frames × 3×6 latent px: temporal tiles of 2 (stride 1), each split into 2×3 spatial tiles.
    z = latents(3, 3, 6)
    assert_close(ours.decode(z, tiling=SMALL_TILES), ref_decode(reference, z, SMALL_TILES))


def test_spatial_only_tiled_decode_matches_reference(reference, ours) -> None:
    z = latents(2, 3, 6)  # width 6 > 4: both diffusers versions tile it (2×3 tiles)
    assert_close(ours.decode(z, tiling=VAETiling(**SMALL_TILES)), ref_decode(reference, z, SMALL_TILES))


def test_decode_spatial_trigger_follows_diffusers_0_33_1(reference, ours) -> None:
    # Latent width 3 lies in (stride/8, tile/8] = (2, 4]: 0.33.1 tiles it (0.42.1 does not),
    # so the reference here is its tiled_decode called directly, which 0.33.1 dispatches to.
    z = latents(1, 3, 3)
    set_tiling(reference, SMALL_TILES)
    with torch.no_grad():
        expected = reference.tiled_decode(z / reference.config.scaling_factor).sample
        untiled = reference.post_quant_conv(z / reference.config.scaling_factor)
        untiled = reference.decoder(untiled)
    assert (expected - untiled).abs().max() > 1e-3  # the two rules really give different videos here
    assert_close(ours.decode(z, tiling=SMALL_TILES), expected)


def test_tiled_encode_matches_reference(reference, ours) -> None:
    # 13 frames > 8: temporal tiles; 48×40 px > 32: 3×3 spatial tiles inside each.
    x = pixels(13, 48, 40)
    assert_close(ours.encode(x, tiling=SMALL_TILES), ref_encode(reference, x, SMALL_TILES))


def test_sample_draws_like_reference(reference, ours) -> None:
    x = pixels(5, 16, 16)
    set_tiling(reference, None)
    with torch.no_grad():
        posterior = reference.encode(x).latent_dist
        expected = posterior.sample(generator=torch.Generator().manual_seed(7)) * reference.config.scaling_factor
    got = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    assert_close(got, expected)
    assert (got - ours.encode(x)).abs().max() > 1e-3  # a draw, not the mean


def test_dict_tiling_equals_dataclass(ours) -> None:
    z = latents(2, 3, 6)
    assert torch.equal(ours.decode(z, tiling=SMALL_TILES), ours.decode(z, tiling=VAETiling(**SMALL_TILES)))


class LargestTensor(TorchDispatchMode):
    """Records the most elements any tensor an operation returns has."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.elements = max([self.elements] + [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
        return out


@pytest.mark.parametrize("shape", [(1, 16, 2, 4, 4), (1, 16, 5, 3, 5), (2, 16, 1, 2, 3)])
def test_decode_peak_is_the_largest_tensor_an_untiled_decode_makes(ours, shape: tuple[int, ...]) -> None:
    with LargestTensor() as seen:
        ours.decode(torch.randn(shape))
    assert ours._decode_peak(shape) == seen.elements


@pytest.mark.parametrize("shape", [(1, 3, 5, 32, 32), (1, 3, 1, 24, 40), (2, 3, 9, 16, 24)])
def test_encode_peak_is_the_largest_tensor_an_untiled_encode_makes(ours, shape: tuple[int, ...]) -> None:
    with LargestTensor() as seen:
        ours.encode(torch.randn(shape))
    assert ours._encode_peak(shape) == seen.elements


def test_real_vae_decodes_the_640_buckets_untiled_and_larger_ones_tiled() -> None:
    with torch.device("meta"):
        vae = HunyuanVideoVAE(VAEConfig())
    # One temporal tile: 5 latent frames. 416x960 px is the 640 bucket with the largest padded frame.
    assert vae._decode_peak((1, 16, 5, 416 // 8, 960 // 8)) == 256 * 19 * 418 * 962 <= vae_module.MAX_UNTILED_ELEMENTS
    assert vae._decode_peak((1, 16, 5, 512 // 8, 880 // 8)) > vae_module.MAX_UNTILED_ELEMENTS  # a 672 px bucket


def test_untiled_passes_too_large_for_int32_indexing_are_tiled(ours, monkeypatch, caplog) -> None:
    # Latent width 25 > 192/8: tiled in two columns with the default tiles (see the 0.33.1 trigger above).
    small, large = latents(1, 2, 3), latents(1, 2, 25)
    untiled_small, untiled_large = ours.decode(small), ours.decode(large)
    monkeypatch.setattr(vae_module, "MAX_UNTILED_ELEMENTS", ours._decode_peak(tuple(small.shape)))
    monkeypatch.setattr(ours, "_told_forced_tiling", False)
    with caplog.at_level(logging.INFO, logger="framepack"):
        forced = ours.decode(large)
        assert torch.equal(ours.decode(large), forced)
    assert torch.equal(forced, ours.decode(large, tiling=VAETiling()))
    assert not torch.equal(forced, untiled_large)
    assert torch.equal(ours.decode(small), untiled_small)  # at the bound: untiled
    assert caplog.text.count("VAE decode: tiling spatially") == 1  # logged once

    x = pixels(1, 16, 264)  # wider than the 256 px tile
    monkeypatch.setattr(vae_module, "MAX_UNTILED_ELEMENTS", ours._encode_peak(tuple(x.shape)) - 1)
    assert torch.equal(ours.encode(x), ours.encode(x, tiling=VAETiling()))
    monkeypatch.setattr(vae_module, "MAX_UNTILED_ELEMENTS", ours._encode_peak(tuple(x.shape)))
    assert not torch.equal(ours.encode(x), ours.encode(x, tiling=VAETiling()))


def test_decode_to_another_device_drops_each_chunk_before_the_next(ours, monkeypatch) -> None:
    chunks: list[torch.Tensor] = []
    alive: list[weakref.ref] = []

    def fresh(frames: int) -> torch.Tensor:
        chunk = torch.randn(1, 3, frames, 16, 16)
        chunks.append(chunk.clone())
        alive.append(weakref.ref(chunk))
        return chunk

    def decode_frames(latents: torch.Tensor, *, tiling: object = None):  # type: ignore[no-untyped-def]
        for frames in (5, 4, 4):  # 4 latent frames: 13 pixel frames
            assert all(ref() is None for ref in alive), "decode still holds a chunk when it asks for the next"
            yield fresh(frames)

    monkeypatch.setattr(ours, "decode_frames", decode_frames)
    out = ours.decode(latents(4, 2, 2), out_device="cpu")
    assert torch.equal(out, torch.cat(chunks, dim=2))


def test_decode_frames_holds_no_finished_chunk_while_decoding_the_next(ours, monkeypatch) -> None:
    yielded: list[weakref.ref] = []
    decode_tile = ours._decode_tile

    def checked(z: torch.Tensor) -> torch.Tensor:
        assert all(ref() is None for ref in yielded), "a finished chunk is still referenced"
        return decode_tile(z)

    monkeypatch.setattr(ours, "_decode_tile", checked)
    for chunk in ours.decode_frames(latents(9, 1, 1)):
        yielded.append(weakref.ref(chunk))
        del chunk
    assert len(yielded) == 3  # temporal tiles at latent frames 0, 3 and 6


@pytest.mark.parametrize(
    "x, fragment",
    [
        (torch.zeros(1, 3, 2, 16, 16), "1 + 4k frames"),
        (torch.zeros(1, 3, 1, 12, 16), "multiples of 8"),
        (torch.zeros(1, 3, 1, 16, 20), "multiples of 8"),
        (torch.zeros(1, 4, 1, 16, 16), "channels"),
        (torch.zeros(3, 1, 16, 16), "[B, 3, 1+4k, H, W]"),
        (torch.zeros(1, 3, 1, 16, 16, dtype=torch.int64), "floating point"),
    ],
)
def test_encode_rejects_bad_pixels(ours, x: torch.Tensor, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("+", r"\+")):
        ours.encode(x)


@pytest.mark.parametrize(
    "z", [torch.zeros(1, 4, 1, 2, 2), torch.zeros(16, 1, 2, 2), torch.zeros(1, 16, 0, 2, 2), torch.zeros(1, 16, 1, 2)]
)
def test_decode_rejects_bad_latents(ours, z: torch.Tensor) -> None:
    with pytest.raises(InputError, match=r"\[B, 16, T, h, w\]"):
        ours.decode(z)


@pytest.mark.parametrize(
    "tiling",
    [
        dict(tile_sample_min_height=30),
        dict(tile_sample_stride_num_frames=20),
        dict(tile_size=3),
        "big",
    ],
)
def test_bad_tiling_is_a_config_error(ours, tiling) -> None:
    with pytest.raises(ConfigError):
        ours.decode(latents(1, 2, 2), tiling=tiling)


def test_decode_preview_is_the_linear_map(ours) -> None:
    z = torch.zeros(1, 16, 1, 1, 2)
    z[0, 12, 0, 0, 0] = -2.0  # channel 12: (-0.2315, -0.1920, -0.1355)
    z[0, 10, 0, 0, 1] = 3.0  # channel 10: (0.1166, 0.1627, 0.0962)
    got = decode_preview(z)
    assert got.dtype == torch.uint8 and got.shape == (1, 1, 1, 2, 3)
    # pixel 0: 2·(0.2315, 0.1920, 0.1355) + (0.0259, -0.0192, -0.0761) = (0.4889, 0.3648, 0.1949) → ×255, truncated
    # pixel 1: 3·(0.1166, 0.1627, 0.0962) + b = (0.3757, 0.4689, 0.2125) → ×255
    assert got[0, 0, 0].tolist() == [[124, 93, 49], [95, 119, 54]]
    bright = decode_preview(torch.full((1, 16, 1, 1, 1), 0.0).index_fill_(1, torch.tensor([10]), 100.0))
    assert bright[0, 0, 0, 0].tolist() == [255, 255, 255]  # clamped to 1 before scaling


def test_real_config_parses_to_the_hunyuan_preset(tmp_path: Path) -> None:
    real = {
        "_class_name": "AutoencoderKLHunyuanVideo",
        "_diffusers_version": "0.32.0.dev0",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
        "in_channels": 3,
        "latent_channels": 16,
        "layers_per_block": 2,
        "mid_block_add_attention": True,
        "norm_num_groups": 32,
        "out_channels": 3,
        "scaling_factor": 0.476986,
        "spatial_compression_ratio": 8,
        "temporal_compression_ratio": 4,
        "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
    }
    (tmp_path / "config.json").write_text(json.dumps(real))
    config = VAEConfig.from_json(tmp_path / "config.json")
    assert config == VAEConfig.preset("hunyuan")
    with torch.device("meta"):
        model = HunyuanVideoVAE(config)
    # The real file holds 248 tensors and 246,478,803 parameters in the real file.
    assert len(model.state_dict()) == 248
    assert sum(p.numel() for p in model.parameters()) == 246_478_803


def test_tiny_preset_builds_with_16_latent_channels() -> None:
    model = HunyuanVideoVAE(VAEConfig.preset("tiny"))
    assert model.decode(torch.zeros(1, 16, 2, 1, 1)).shape == (1, 3, 5, 8, 8)
    with pytest.raises(ConfigError):
        VAEConfig.preset("huge")  # type: ignore[arg-type]
