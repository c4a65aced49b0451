"""The checkpoint reader: strictness, corrupt files, sharding, mmap storage, config parsing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from framepack.errors import CheckpointError, ConfigError
from framepack.models.configuration import ModelConfig
from framepack.models.loading import PretrainedModel


@dataclasses.dataclass(frozen=True)
class ToyConfig(ModelConfig):
    width: int = 4
    sizes: tuple[int, ...] = (1, 2)


class Toy(PretrainedModel):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.a = nn.Linear(config.width, config.width)
        self.b = nn.Linear(config.width, 2, bias=False)


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config: dict, shards: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, folder / "diffusion_pytorch_model.safetensors")
        return
    keys = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::shards]}
        save_file(part, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def toy_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(4, 4, generator=g),
        "a.bias": torch.randn(4, generator=g),
        "b.weight": torch.randn(2, 4, generator=g),
    }


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("storage", ["copy", "mmap"])
def test_loads_every_tensor_exactly(tmp_path: Path, shards: int, storage: str) -> None:
    tensors = toy_tensors()
    write_checkpoint(tmp_path, tensors, {"_class_name": "Toy", "width": 4, "sizes": [1, 2]}, shards=shards)
    model = Toy.from_pretrained(tmp_path, storage=storage)
    assert model.config == ToyConfig(width=4, sizes=(1, 2))
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name]), name
    assert not any(p.requires_grad for p in model.parameters())


def test_bf16_checkpoint_is_cast_to_requested_dtype(tmp_path: Path) -> None:
    tensors = {k: v.to(torch.bfloat16) for k, v in toy_tensors().items()}
    write_checkpoint(tmp_path, tensors, {"width": 4})
    model = Toy.from_pretrained(tmp_path)
    assert model.a.weight.dtype == torch.float32
    assert torch.equal(model.a.weight, tensors["a.weight"].float())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("a.bias"), "missing keys: a.bias"),
        (lambda t: t.update(extra=torch.zeros(1)), "unexpected keys: extra"),
        (lambda t: t.update({"b.weight": torch.zeros(3, 4)}), "b.weight: checkpoint [3, 4] vs model [2, 4]"),
    ],
)
def test_mismatched_checkpoint_names_the_problem(tmp_path: Path, edit, message: str) -> None:
    tensors = toy_tensors()
    edit(tensors)
    write_checkpoint(tmp_path, tensors, {"width": 4})
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Toy.from_pretrained(tmp_path)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, toy_tensors(), {"width": 4})
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors is truncated"):
        Toy.from_pretrained(tmp_path)


def test_garbage_file_is_named(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, toy_tensors(), {"width": 4})
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        Toy.from_pretrained(tmp_path)


def test_missing_shard_is_named(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, toy_tensors(), {"width": 4}, shards=2)
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors.*missing"):
        Toy.from_pretrained(tmp_path)


def test_no_weights_mentions_what_was_expected(tmp_path: Path) -> None:
    tmp_path.joinpath("config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="expected diffusion_pytorch_model.safetensors"):
        Toy.from_pretrained(tmp_path)


def test_unknown_config_field_is_rejected(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, toy_tensors(), {"width": 4, "depth": 3})
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['depth'\]"):
        Toy.from_pretrained(tmp_path)


def test_not_a_folder_nor_repo_id() -> None:
    with pytest.raises(CheckpointError, match="neither an existing folder nor a hub repo id"):
        Toy.from_pretrained("/definitely/not/here")
