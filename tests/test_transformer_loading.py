"""The transformer checkpoint in its real layout: diffusers' sharded save read back strictly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack.errors import CheckpointError, ConfigError
from framepack.models.transformer import FramePackTransformer, TransformerConfig
from tests.transformer_support import TINY, build_diffusers_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("ckpt")
    model = build_diffusers_model(folder, seed=11)
    return folder, {k: v.detach().clone() for k, v in model.state_dict().items()}


def copy_of(checkpoint: tuple, tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(checkpoint[0], folder)
    return folder


def shard_holding(folder: Path, key: str) -> Path:
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    return folder / index["weight_map"][key]


def test_real_layout_loads_every_weight(checkpoint: tuple) -> None:
    folder, state = checkpoint
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "HunyuanVideoFramepackTransformer3DModel"
    model = FramePackTransformer.from_pretrained(folder)
    assert model.config == TransformerConfig.from_dict(config)
    ours = model.state_dict()
    block = "transformer_blocks.1.attn."
    fused = torch.cat([state[block + n + ".weight"] for n in ("to_q", "to_k", "to_v")])
    assert torch.equal(ours["double_blocks.1.image_qkv.weight"], fused)
    single = "single_transformer_blocks.0."
    parts = [single + n + ".bias" for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    assert torch.equal(ours["single_blocks.0.qkv_mlp.bias"], torch.cat([state[p] for p in parts]))
    assert torch.equal(ours["proj_out.weight"], state["proj_out.weight"])
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in state.values())  # one copy, no extras


def test_bf16_load_keeps_the_output_head_float32(checkpoint: tuple) -> None:
    model = FramePackTransformer.from_pretrained(checkpoint[0], dtype=torch.bfloat16)
    assert model.proj_out.weight.dtype == torch.float32
    assert model.double_blocks[0].image_qkv.weight.dtype == torch.bfloat16


def rewrite_shard(folder: Path, key: str, edit) -> None:
    path = shard_holding(folder, key)
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_key_is_named(checkpoint: tuple, tmp_path: Path) -> None:
    folder = copy_of(checkpoint, tmp_path)
    rewrite_shard(
        folder,
        "transformer_blocks.0.attn.add_k_proj.weight",
        lambda t: t.pop("transformer_blocks.0.attn.add_k_proj.weight"),
    )
    with pytest.raises(CheckpointError, match=r"missing keys: transformer_blocks\.0\.attn\.add_k_proj\.weight"):
        FramePackTransformer.from_pretrained(folder)


def test_extra_key_is_named(checkpoint: tuple, tmp_path: Path) -> None:
    folder = copy_of(checkpoint, tmp_path)
    rewrite_shard(folder, "norm_out.linear.weight", lambda t: t.update({"norm_out.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: norm_out\.extra"):
        FramePackTransformer.from_pretrained(folder)


def test_wrong_shape_is_named(checkpoint: tuple, tmp_path: Path) -> None:
    folder = copy_of(checkpoint, tmp_path)
    key = "single_transformer_blocks.1.proj_mlp.weight"
    rewrite_shard(folder, key, lambda t: t.update({key: t[key][:-1]}))
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*single_transformer_blocks\.1\.proj_mlp\.weight"):
        FramePackTransformer.from_pretrained(folder)


def test_truncated_shard_is_named(checkpoint: tuple, tmp_path: Path) -> None:
    folder = copy_of(checkpoint, tmp_path)
    path = shard_holding(folder, "proj_out.weight")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"{path.name} is truncated"):
        FramePackTransformer.from_pretrained(folder)


def test_unknown_config_field_is_named(checkpoint: tuple, tmp_path: Path) -> None:
    folder = copy_of(checkpoint, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_experts"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['num_experts'\]"):
        FramePackTransformer.from_pretrained(folder)


def test_config_of_another_size_is_a_shape_error(checkpoint: tuple, tmp_path: Path) -> None:
    folder = copy_of(checkpoint, tmp_path)
    (folder / "config.json").write_text(json.dumps({**TINY, "image_proj_dim": 20}))
    with pytest.raises(CheckpointError, match=r"image_projection\.up\.weight"):
        FramePackTransformer.from_pretrained(folder)
