"""Quantizing to fp8 (at load or after) and saving the result once: block scales as musubi
computes them, the same weights either way, and a saved folder that loads back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framepack.errors import ConfigError, OutputError
from framepack.models import fp8
from framepack.models.loading import from_checkpoint_state_dict, to_checkpoint_state_dict
from framepack.models.transformer import FramePackTransformer
from tests.test_fp8_loading import BLOCK, block_linears, same_bits
from tests.transformer_support import TINY, build_diffusers_model, conditioning_and_context, make_inputs

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dense")
    build_diffusers_model(folder, seed=7)
    return folder


def output(model: FramePackTransformer) -> torch.Tensor:
    inputs = make_inputs(1, [7], seed=4)
    cond, context = conditioning_and_context(inputs)
    return model(inputs["latents"], torch.tensor([650.0]), cond, context)


def test_block_scale_is_max_over_448_and_values_round_within_e4m3() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 48, generator=g) * torch.logspace(-3, 1, 48)  # columns of very different sizes
    w[2, 16:32] = 0  # one block of zeros
    q, scale = fp8.quantize(w, block=16)
    assert q.dtype == FP8 and scale.shape == (6, 3, 1)
    expected = w.reshape(6, 3, 16).abs().amax(dim=2, keepdim=True) / 448
    expected[2, 1] = 1.0
    assert torch.equal(scale, expected)
    value = fp8.dequantize(q, scale, torch.float32)
    assert torch.isfinite(value).all() and torch.equal(value[2, 16:32], torch.zeros(16))
    step = scale.repeat_interleave(16, dim=1).reshape(6, 48) * 2.0**-10  # half the smallest subnormal step
    assert ((value - w).abs() <= 2.0**-4 * w.abs() + step).all()  # 3 mantissa bits
    assert fp8.quantize(w, block=32)[1].shape == (6, 1)  # 48 columns: no 32-blocks, per channel
    assert fp8.quantize(torch.zeros(4, 8), per="tensor")[1].tolist() == [1.0]


def test_quantizing_at_load_equals_quantizing_the_loaded_model(dense_folder: Path) -> None:
    at_load = FramePackTransformer.from_pretrained(dense_folder, dtype=torch.float32, weights="fp8", fp8_block=BLOCK)
    after = FramePackTransformer.from_pretrained(dense_folder, dtype=torch.float32)
    after.quantize_fp8(block=BLOCK)
    a, b = at_load.state_dict(), after.state_dict()
    assert a.keys() == b.keys()
    assert all(same_bits(a[k], b[k]) for k in a)
    quantized = {k for k, t in a.items() if t.dtype == FP8}
    assert quantized == {f"{ours}.weight" for ours in block_linears()}  # blocks' Linears, modulation aside
    assert a["single_blocks.0.proj_out.weight_scale"].shape == (32, 160 // BLOCK, 1)


def test_default_block_64_falls_back_to_per_channel_on_narrow_layers(dense_folder: Path) -> None:
    model = FramePackTransformer.from_pretrained(dense_folder, dtype=torch.float32, weights="fp8")
    assert model.double_blocks[0].image_qkv.weight_scale.shape == (96, 1)  # 32 inputs: no block of 64
    assert model.double_blocks[0].image_mlp.fc_out.weight_scale.shape == (32, 2, 1)  # 128 inputs: two blocks


@pytest.mark.parametrize("storage", ["copy", "mmap"])
@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 20_000])
def test_save_then_load_is_bit_identical(
    dense_folder: Path, tmp_path: Path, max_shard_bytes: int, storage: str
) -> None:
    model = FramePackTransformer.from_pretrained(dense_folder, dtype=torch.float32, weights="fp8", fp8_block=BLOCK)
    model.save_pretrained(tmp_path / "fp8", max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "fp8" / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes < 2**20)
    loaded = FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32, storage=storage)
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    got, want = output(loaded), output(model)
    if storage == "copy":
        assert torch.equal(got, want)
    else:  # a mapped tensor may lie off a 64-byte boundary, where CPU kernels take another path
        assert (got - want).norm() <= 1e-6 * want.norm()


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in ``folder``, read by safetensors itself."""
    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


def test_saved_folder_has_the_diffusers_keys_and_a_scale_weight_per_part(dense_folder: Path, tmp_path: Path) -> None:
    model = FramePackTransformer.from_pretrained(dense_folder, dtype=torch.float32, weights="fp8", fp8_block=BLOCK)
    model.save_pretrained(tmp_path / "fp8")
    dense, saved = read_folder(dense_folder), read_folder(tmp_path / "fp8")
    part_weights = [k for keys in block_linears().values() for k in keys]
    assert len(part_weights) == TINY["num_layers"] * 12 + TINY["num_single_layers"] * 5
    assert set(saved) == set(dense) | {k[: -len("weight")] + "scale_weight" for k in part_weights}
    for key in part_weights:
        weight, scale = saved[key], saved[key[: -len("weight")] + "scale_weight"]
        assert weight.dtype == FP8
        assert scale.shape == (weight.shape[0], weight.shape[1] // BLOCK, 1)
        value = weight.float() * scale.repeat_interleave(BLOCK, dim=1).reshape(weight.shape)
        assert ((value - dense[key]).abs() <= 2.0**-4 * dense[key].abs() + scale.max() * 2.0**-10).all()
    config = json.loads((tmp_path / "fp8" / "config.json").read_text())
    assert config["_class_name"] == "HunyuanVideoFramepackTransformer3DModel"
    assert {k: config[k] for k in TINY} == {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}


def test_checkpoint_state_dict_of_an_fp8_model_maps_back(dense_folder: Path) -> None:
    model = FramePackTransformer.from_pretrained(dense_folder, dtype=torch.float32, weights="fp8", fp8_block=BLOCK)
    layer = model.single_blocks[0].qkv_mlp
    layer.weight_scale = layer.weight_scale.reshape(-1)[:1]  # one scale for the fused tensor
    saved = to_checkpoint_state_dict(model)
    assert saved["single_transformer_blocks.0.proj_mlp.scale_weight"].shape == (1,)
    back, ours = from_checkpoint_state_dict(model, saved), model.state_dict()
    assert back.keys() == ours.keys()
    expanded = ours["single_blocks.0.qkv_mlp.weight_scale"].expand(224, 1)  # the loader's per-row form
    assert same_bits(back.pop("single_blocks.0.qkv_mlp.weight_scale"), expanded.contiguous())
    assert all(same_bits(t, ours[k]) for k, t in back.items())


def test_refusals(dense_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weights must be None or 'fp8', got 'int8'"):
        FramePackTransformer.from_pretrained(dense_folder, weights="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fp8_block must be a positive"):
        FramePackTransformer.from_pretrained(dense_folder, weights="fp8", fp8_block=0)
    model = FramePackTransformer.from_pretrained(dense_folder, dtype=torch.float32)
    with pytest.raises(OutputError, match="already holds checkpoint files"):
        model.save_pretrained(dense_folder)
    model.enable_streaming("cpu", None)
    with pytest.raises(ConfigError, match="disable streaming first"):
        model.quantize_fp8(BLOCK)
