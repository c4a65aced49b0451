"""Fused tensors (q|k|v, q|k|v|proj_mlp, modulations, their fp8 scales) whose parts lie back to
back in the file load as one view of it: mapped with storage="mmap", with the same bits as the
concatenation a file in another order loads to. Our writers store the parts that way."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.full_scale_checkpoint import write_checkpoints
from framepack.models.loading import SafetensorsFile
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.test_mmap_storage import linux_only
from tests.transformer_support import randomise_

FP8 = torch.float8_e4m3fn
NAME = "diffusion_pytorch_model"

# Our fused tensors -> their checkpoint modules in fusion order (weights.md §2), spelled by hand.
DOUBLE = {
    "modulation": ("norm1.linear", "norm1_context.linear"),
    "image_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE = {"qkv_mlp": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def fused(config: TransformerConfig) -> dict[str, list[str]]:
    """Our fused Linear -> the checkpoint modules of its parts, in order."""
    out = {}
    for i in range(config.num_layers):
        for ours, parts in DOUBLE.items():
            out[f"double_blocks.{i}.{ours}"] = [f"transformer_blocks.{i}.{p}" for p in parts]
    for i in range(config.num_single_layers):
        for ours, parts in SINGLE.items():
            out[f"single_blocks.{i}.{ours}"] = [f"single_transformer_blocks.{i}.{p}" for p in parts]
    return out


def inside_file(tensor: torch.Tensor, path: Path) -> bool:
    """True when all of the tensor's bytes lie in one mapping of ``path`` (per /proc/self/maps)."""
    low_ptr, high_ptr = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= low_ptr and high_ptr <= high:
                return True
    return False


def read_header(path: Path) -> dict[str, dict]:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


@pytest.fixture(scope="module")
def models() -> dict[str, FramePackTransformer]:
    dense = FramePackTransformer(TransformerConfig.preset("tiny"))
    randomise_(dense, seed=3)
    quantized = FramePackTransformer(TransformerConfig.preset("tiny"))
    quantized.load_state_dict(dense.state_dict())
    quantized.quantize_fp8(block=16)  # widths 32 and 128: two blocks of scales per row at least
    return {"dense": dense.eval(), "fp8": quantized.eval()}


def shard_of(folder: Path) -> dict[str, Path]:
    index = folder / f"{NAME}.safetensors.index.json"
    if not index.exists():
        return dict.fromkeys(read_header(folder / f"{NAME}.safetensors"), folder / f"{NAME}.safetensors")
    return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}


def test_span_views_back_to_back_tensors_only(tmp_path: Path) -> None:
    a, b, c = torch.arange(6.0).reshape(2, 3), torch.arange(6.0, 15.0).reshape(3, 3), torch.arange(4.0).reshape(2, 2)
    save_file({"a": a, "b": b, "c": c, "h": a.half()}, tmp_path / "x.safetensors")
    offsets = {k: v["data_offsets"] for k, v in read_header(tmp_path / "x.safetensors").items()}
    first, second = sorted(["a", "b"], key=lambda k: offsets[k][0])
    assert offsets[first][1] == offsets[second][0]  # save_file put them back to back
    f = SafetensorsFile(tmp_path / "x.safetensors")
    try:
        joined = f.span([first, second])
        assert joined is not None and torch.equal(joined, torch.cat([{"a": a, "b": b}[k] for k in (first, second)]))
        assert f.span([second, first]) is None  # back to back, but not in this order
        assert f.span(["a", "c"]) is None and f.span(["c", "a"]) is None  # trailing dims differ
        assert f.span(["a", "h"]) is None and f.span(["h", "a"]) is None  # dtypes differ
    finally:
        f.close()


@linux_only
@pytest.mark.parametrize("kind", ["dense", "fp8"])
@pytest.mark.parametrize("max_shard_bytes", [2**30, 40_000])
def test_saved_model_maps_its_fused_tensors(models: dict, kind: str, max_shard_bytes: int, tmp_path: Path) -> None:
    model, config = models[kind], models[kind].config
    files = model.save_pretrained(tmp_path / "ours", max_shard_bytes=max_shard_bytes)
    assert (len(files) > 3) == (max_shard_bytes < 2**20)  # sharded: shards + index + config
    where = shard_of(tmp_path / "ours")
    for parts in fused(config).values():  # the file layout itself, read by hand
        for suffix in ("weight", "bias") + (("scale_weight",) if kind == "fp8" else ()):
            keys = [f"{p}.{suffix}" for p in parts]
            if suffix == "scale_weight" and keys[0] not in where:
                continue  # modulation stays unquantized
            assert len({where[k] for k in keys}) == 1, keys  # never split across shards
            header = read_header(where[keys[0]])
            ends = [header[k]["data_offsets"] for k in keys]
            assert all(a[1] == b[0] for a, b in pairwise(ends)), keys

    mapped = FramePackTransformer.from_pretrained(tmp_path / "ours", dtype=torch.float32, storage="mmap")
    copied = FramePackTransformer.from_pretrained(tmp_path / "ours", dtype=torch.float32, storage="copy")
    tensors = {k: v for f in sorted(set(where.values())) for k, v in load_file(f).items()}
    checked = 0
    for ours, parts in fused(config).items():
        for attr, suffix in (("weight", "weight"), ("bias", "bias"), ("weight_scale", "scale_weight")):
            keys = [f"{p}.{suffix}" for p in parts]
            if keys[0] not in tensors:  # an unquantized layer has no scale
                continue
            want = torch.cat([tensors[k] for k in keys])  # the concatenation, by safetensors' own reader
            if attr == "weight_scale" and want.shape[1] == 1:
                want = want.reshape(-1, 1)
            got, copy = (getattr(m.get_submodule(ours), attr) for m in (mapped, copied))
            assert same_bits(got, want) and same_bits(copy, want), (ours, attr)
            assert inside_file(got, where[keys[0]]), (ours, attr)  # one view of the mapped file
            assert not inside_file(copy, where[keys[0]]), (ours, attr)
            checked += 1
    expected = len(fused(config)) * (3 if kind == "fp8" else 2) - (config.num_layers if kind == "fp8" else 0)
    assert checked == expected
    a, b = mapped.state_dict(), copied.state_dict()
    assert a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)


@linux_only
@pytest.mark.parametrize("kind", ["dense", "fp8"])
def test_parts_in_another_order_load_by_copy_to_the_same_bits(models: dict, kind: str, tmp_path: Path) -> None:
    models[kind].save_pretrained(tmp_path / "ours")
    ours = tmp_path / "ours" / f"{NAME}.safetensors"
    (tmp_path / "sorted").mkdir()
    (tmp_path / "sorted" / "config.json").write_text((tmp_path / "ours" / "config.json").read_text())
    theirs = tmp_path / "sorted" / f"{NAME}.safetensors"
    save_file(load_file(ours), theirs)  # safetensors orders by dtype, then name: to_k, to_q, to_v
    offsets = {k: v["data_offsets"] for k, v in read_header(theirs).items()}
    q, k = (offsets[f"transformer_blocks.0.attn.to_{x}.weight"] for x in "qk")
    assert q[1] != k[0]  # q|k|v not back to back in this file
    reference = FramePackTransformer.from_pretrained(tmp_path / "ours", dtype=torch.float32, storage="copy")
    layer = "double_blocks.1.image_qkv"
    for storage in ("mmap", "copy"):
        loaded = FramePackTransformer.from_pretrained(tmp_path / "sorted", dtype=torch.float32, storage=storage)
        a, b = loaded.state_dict(), reference.state_dict()
        assert a.keys() == b.keys() and all(same_bits(a[n], b[n]) for n in a)
        assert not inside_file(loaded.get_submodule(layer).weight, theirs)  # concatenated
    mapped = FramePackTransformer.from_pretrained(tmp_path / "ours", dtype=torch.float32, storage="mmap")
    assert inside_file(mapped.get_submodule(layer).weight, ours)


@linux_only
def test_benchmark_writer_puts_fused_parts_back_to_back(tmp_path: Path) -> None:
    config = TransformerConfig.preset("medium")
    write_checkpoints(config, {"fp8": tmp_path / "fp8"}, max_shard_bytes=8 * 2**20)
    where = shard_of(tmp_path / "fp8")
    assert len(set(where.values())) > 2
    mapped = FramePackTransformer.from_pretrained(tmp_path / "fp8", dtype=torch.bfloat16, storage="mmap")
    for ours, parts in fused(config).items():
        layer = mapped.get_submodule(ours)
        assert inside_file(layer.weight, where[f"{parts[0]}.weight"]), ours
        assert inside_file(layer.bias, where[f"{parts[0]}.bias"]), ours
        if layer.weight.dtype == FP8:
            assert inside_file(layer.weight_scale, where[f"{parts[0]}.scale_weight"]), ours
    assert mapped.single_blocks[0].qkv_mlp.weight.dtype == FP8
    assert mapped.double_blocks[0].modulation.weight.dtype == torch.bfloat16
