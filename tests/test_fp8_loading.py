"""fp8 files in the three layouts in circulation (kijai, musubi --fp8_scaled, ComfyUI), written here
by an independent writer: key names spelled by hand, weights quantized by hand.

Loaded, every fp8 Linear weight stays fp8 and dequantizes to exactly the writer's own
dequantization, and the model computes what a model loaded from those dequantized float32
weights computes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from framepack.errors import CheckpointError
from framepack.models.transformer import FramePackTransformer
from tests.test_mmap_storage import file_backed, linux_only
from tests.transformer_support import TINY, build_diffusers_model, conditioning_and_context, make_inputs

FP8 = torch.float8_e4m3fn
BLOCK = 16  # divides every input width of the tiny model (32, 128, 160)

# Our fused or renamed Linear -> its diffusers modules (weights.md §2 lists them), in fused row order.
DOUBLE = {
    "image_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "image_attn_out": ("attn.to_out.0",),
    "context_attn_out": ("attn.to_add_out",),
    "image_mlp.fc_in": ("ff.net.0.proj",),
    "image_mlp.fc_out": ("ff.net.2",),
    "context_mlp.fc_in": ("ff_context.net.0.proj",),
    "context_mlp.fc_out": ("ff_context.net.2",),
}
SINGLE = {"qkv_mlp": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "proj_out": ("proj_out",)}


def block_linears() -> dict[str, list[str]]:
    """Our Linear module -> the checkpoint's weight keys of its parts."""
    out = {}
    for i in range(TINY["num_layers"]):
        for ours, parts in DOUBLE.items():
            out[f"double_blocks.{i}.{ours}"] = [f"transformer_blocks.{i}.{p}.weight" for p in parts]
    for i in range(TINY["num_single_layers"]):
        for ours, parts in SINGLE.items():
            out[f"single_blocks.{i}.{ours}"] = [f"single_transformer_blocks.{i}.{p}.weight" for p in parts]
    return out


def full_scale(scale: torch.Tensor, out: int, inn: int) -> torch.Tensor:
    """A scale of any stored shape spread over the whole [out, in] weight, in float32."""
    s = scale.float()
    if s.ndim == 3:  # [out, in / block, 1]: each value covers its block of columns
        return s.repeat_interleave(inn // s.shape[1], dim=1).reshape(out, inn)
    return s.reshape(-1, 1).expand(out, inn)  # [], [1] or [out, 1]


def hand_scale(w: torch.Tensor, kind: str) -> torch.Tensor:
    out, inn = w.shape
    if kind == "scalar":  # ComfyUI stores a 0-d scale
        return w.abs().max() / 448
    if kind == "tensor":
        return (w.abs().max() / 448).reshape(1)
    if kind == "channel":
        return w.abs().amax(dim=1, keepdim=True) / 448
    block = 8 if kind == "block8" else BLOCK
    return w.reshape(out, inn // block, block).abs().amax(dim=2, keepdim=True) / 448


def quantize_by_hand(
    w: torch.Tensor, kind: str, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(fp8 weight, stored scale or None, the float32 value they stand for)."""
    if kind == "none":
        q = w.to(FP8)
        return q, None, q.float()
    scale = hand_scale(w, kind).to(scale_dtype)
    full = full_scale(scale, *w.shape)
    q = (w / full).to(FP8)
    return q, scale, q.float() * full


def comfy_quant(fmt: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


def write_fp8(
    folder: Path,
    base: dict[str, torch.Tensor],
    kind_of: Callable[[str], str],
    *,
    suffix: str = "scale_weight",
    scale_dtype: torch.dtype = torch.float32,
    other_dtype: torch.dtype = torch.float32,
    extra: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Write an fp8 checkpoint of ``base``; returns its dequantized float32 state dict."""
    quantized = {k for keys in block_linears().values() for k in keys}
    tensors, values = {}, {}
    for key, w in base.items():
        if key in quantized:
            q, scale, value = quantize_by_hand(w, kind_of(key), scale_dtype)
            tensors[key] = q
            if scale is not None:
                tensors[key[: -len("weight")] + suffix] = scale
                if suffix == "weight_scale":
                    tensors[key[: -len("weight")] + "comfy_quant"] = comfy_quant("float8_e4m3fn")
            values[key] = value
        else:
            tensors[key] = w.to(other_dtype)
            values[key] = tensors[key].float()
    tensors.update(extra or {})
    folder.mkdir()
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(TINY))
    return values


def write_dense(folder: Path, values: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in values.items()}, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(TINY))
    return folder


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    model = build_diffusers_model(None, seed=5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def mixed_kind(key: str) -> str:
    """Parts of one fused tensor get different kinds: per tensor, per channel, per block of 8 or 16, none."""
    kinds = {"to_q": "tensor", "add_q_proj": "tensor", "to_k": "channel", "add_k_proj": "channel"}
    kinds.update({"to_v": "block8", "add_v_proj": "none"})
    return kinds.get(key.split(".")[-2], "block")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


KINDS: dict[str, dict] = {
    "kijai": dict(kind_of=lambda key: "none"),
    "musubi_block_bf16": dict(kind_of=lambda key: "block", scale_dtype=torch.bfloat16, other_dtype=torch.bfloat16),
    "musubi_mixed": dict(kind_of=mixed_kind),
    "comfy_old": dict(kind_of=lambda key: "scalar", extra={"scaled_fp8": torch.zeros(0, dtype=FP8)}),
    "comfy_new": dict(
        kind_of=lambda key: "scalar", suffix="weight_scale", extra={"scaled_fp8": torch.zeros(0, dtype=FP8)}
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_fp8_files_load_to_the_writers_values(base: dict, kind: str, tmp_path: Path) -> None:
    values = write_fp8(tmp_path / "fp8", base, **KINDS[kind])
    model = FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32, storage="mmap")
    for ours, keys in block_linears().items():
        layer = model.get_submodule(ours)
        assert layer.weight.dtype == FP8, ours
        expected = torch.cat([values[k] for k in keys])
        assert torch.equal(layer.dense_weight(), expected), ours  # bit for bit
        assert (layer.weight_scale is None) == (kind == "kijai")
    image_modulation = values["transformer_blocks.0.norm1.linear.weight"]  # not quantized in the file
    assert torch.equal(model.double_blocks[0].modulation.weight[: image_modulation.shape[0]], image_modulation)

    dense = FramePackTransformer.from_pretrained(write_dense(tmp_path / "dense", values), dtype=torch.float32)
    inputs = make_inputs(1, [6], seed=2)
    cond, context = conditioning_and_context(inputs)
    t = torch.tensor([700.0])
    got, want = model(inputs["latents"], t, cond, context), dense(inputs["latents"], t, cond, context)
    assert got.abs().max() > 0
    assert (got - want).norm() <= 1e-5 * want.norm()


def test_fused_parts_with_different_per_tensor_scales_become_one_per_row_scale(base: dict, tmp_path: Path) -> None:
    write_fp8(tmp_path / "fp8", base, kind_of=lambda key: "tensor")
    model = FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32)
    scale = model.single_blocks[1].qkv_mlp.weight_scale
    dim = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    assert scale.shape == (3 * dim + 4 * dim, 1)
    parts = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    expected = [hand_scale(base[f"single_transformer_blocks.1.{p}.weight"], "tensor") for p in parts]
    assert len({float(s) for s in expected}) == 4  # really different scales
    for rows, value in zip(scale.split([dim, dim, dim, 4 * dim]), expected):
        assert torch.equal(rows, value.expand(rows.shape[0], 1))
    assert model.double_blocks[0].image_attn_out.weight_scale.shape == (1,)  # an unfused layer keeps its own


def test_an_fp8_tensor_that_is_no_linear_weight_is_dequantized(base: dict, tmp_path: Path) -> None:
    conv = base["x_embedder.proj.weight"]
    scale = conv.abs().max().reshape(1) / 448
    q = (conv / scale).to(FP8)
    extra = {"x_embedder.proj.weight": q, "x_embedder.proj.scale_weight": scale}
    write_fp8(tmp_path / "fp8", base, kind_of=lambda key: "none", extra=extra)
    model = FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32)
    assert model.patch_embed.proj.weight.dtype == torch.float32
    assert torch.equal(model.patch_embed.proj.weight, q.float() * scale)


@linux_only
def test_musubi_block_scaled_loads_mapped_as_float32_elsewhere(base: dict, tmp_path: Path) -> None:
    """What benchmarks/full_scale.py does at real size: musubi layout, dtype float32, storage mmap."""
    write_fp8(
        tmp_path / "fp8", base, kind_of=lambda key: "block", scale_dtype=torch.bfloat16, other_dtype=torch.bfloat16
    )
    path = tmp_path / "fp8" / "diffusion_pytorch_model.safetensors"
    mapped = FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32, storage="mmap")
    copied = FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32, storage="copy")
    fp8_names = {f"{ours}.weight" for ours in block_linears()}
    for name, tensor in mapped.state_dict().items():
        assert tensor.dtype == (FP8 if name in fp8_names else torch.float32), name
        assert same_bits(tensor, copied.state_dict()[name]), name
    unfused = [mapped.double_blocks[0].image_attn_out.weight, mapped.single_blocks[1].proj_out.weight]
    assert all(file_backed(w, path) for w in unfused)  # fp8 bytes stay in the file's pages
    assert not any(file_backed(w, path) for w in (copied.double_blocks[0].image_attn_out.weight,))
    assert mapped.double_blocks[0].image_mlp.fc_in.weight_scale.shape == (4 * 32, 32 // BLOCK, 1)


BAD: dict[str, tuple[dict[str, torch.Tensor], str]] = {
    "scale of a wrong shape": (
        {"transformer_blocks.0.attn.to_out.0.scale_weight": torch.ones(7, 1)},
        r"transformer_blocks\.0\.attn\.to_out\.0\.scale_weight.*got \[7, 1\]",
    ),
    "comfy_quant of another format": (
        {"transformer_blocks.1.ff.net.2.comfy_quant": comfy_quant("nvfp4")},
        r"transformer_blocks\.1\.ff\.net\.2\.comfy_quant.*'nvfp4'",
    ),
    "scale without its weight": (
        {"transformer_blocks.0.attn.to_gone.scale_weight": torch.ones(1)},
        r"transformer_blocks\.0\.attn\.to_gone\.scale_weight.*transformer_blocks\.0\.attn\.to_gone\.weight",
    ),
    "two scales for one weight": (
        {"single_transformer_blocks.0.proj_out.weight_scale": torch.ones(1)},
        r"single_transformer_blocks\.0\.proj_out\.weight.*two scales",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_fp8_files_name_the_key(base: dict, tmp_path: Path, case: str) -> None:
    extra, message = BAD[case]
    write_fp8(tmp_path / "fp8", base, kind_of=lambda key: "tensor", extra=extra)
    with pytest.raises(CheckpointError, match=message):
        FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32)


def test_scale_keys_are_consumed_but_strictness_stays(base: dict, tmp_path: Path) -> None:
    write_fp8(tmp_path / "fp8", base, kind_of=lambda key: "block", extra={"norm_out.extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: norm_out\.extra$"):  # and no scale key
        FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.float32)


def test_the_mixed_writer_mixes_every_kind_inside_fused_tensors() -> None:
    kinds = {ours: {mixed_kind(k) for k in keys} for ours, keys in block_linears().items()}
    assert kinds["single_blocks.0.qkv_mlp"] == {"tensor", "channel", "block8", "block"}  # 4 and 2 blocks a row
    assert kinds["double_blocks.0.context_qkv"] == {"tensor", "channel", "none"}
