"""storage="mmap" keeps weights file-backed with identical outputs; ComponentResidency and the
streamer move weights without making host copies of them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from framepack.memory.residency import ComponentResidency
from framepack.memory.streamer import LayerStreamer, block_nbytes
from framepack.models.configuration import ModelConfig
from framepack.models.loading import PretrainedModel

linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")


@dataclasses.dataclass(frozen=True)
class StackConfig(ModelConfig):
    width: int = 16
    depth: int = 4


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.fc(self.norm(x)))


class Stack(PretrainedModel):
    config_class = StackConfig

    def __init__(self, config: StackConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.width, config.width)
        self.blocks = nn.ModuleList(Block(config.width) for _ in range(config.depth))
        self.head = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor, blocks: object = None) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks if blocks is None else blocks:
            x = block(x)
        return self.head(x)


def save_stack(folder: Path, width: int = 16, depth: int = 4, seed: int = 0) -> Path:
    """A checkpoint with every tensor random (LayerNorm's ones/zeros too)."""
    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in Stack(StackConfig(width, depth)).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: torch.randn(s, generator=g) for k, s in names.items()}, folder / "diffusion_pytorch_model.safetensors"
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "Stack", "width": width, "depth": depth}))
    return folder / "diffusion_pytorch_model.safetensors"


def file_backed(tensor: torch.Tensor, path: Path) -> bool:
    """True when the tensor's memory lies in a mapping of ``path`` (per /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= address < high:
                return True
    return False


def test_mmap_outputs_identical_to_copy(tmp_path: Path) -> None:
    save_stack(tmp_path)
    copied = Stack.from_pretrained(tmp_path, storage="copy")
    mapped = Stack.from_pretrained(tmp_path, storage="mmap")
    x = torch.randn(3, 16)
    assert torch.equal(mapped(x), copied(x))


@linux_only
def test_mmap_tensors_are_file_backed(tmp_path: Path) -> None:
    path = save_stack(tmp_path)
    mapped = Stack.from_pretrained(tmp_path, storage="mmap")
    copied = Stack.from_pretrained(tmp_path, storage="copy")
    assert all(file_backed(p, path) for p in mapped.parameters())
    assert not any(file_backed(p, path) for p in copied.parameters())


RSS_PROBE = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from tests.test_mmap_storage import Stack

    def anon_kib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    torch.set_num_threads(1)
    models = []
    for storage in ("mmap", "copy"):  # mmap first: a copy's freed pages cannot mask its growth
        before = anon_kib()
        models.append(Stack.from_pretrained(sys.argv[1], storage=storage))
        with torch.no_grad():
            models[-1](torch.randn(2, models[-1].config.width))
        print(storage, anon_kib() - before)
    """
)


@linux_only
def test_mmap_loading_adds_no_anonymous_memory(tmp_path: Path) -> None:
    # embed + 4 blocks + head of 1024x1024 float32: ~24 MiB of weights
    save_stack(tmp_path, width=1024, depth=4)
    weights_kib = 6 * (1024 * 1024 * 4) // 1024
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(tmp_path)], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    growth = {storage: int(kib) for storage, kib in (line.split() for line in out.splitlines())}
    assert growth["copy"] >= 0.9 * weights_kib, growth
    assert growth["mmap"] <= 0.25 * weights_kib, growth


@linux_only
def test_component_residency_round_trip_keeps_file_backed_host_tensors(tmp_path: Path) -> None:
    path = save_stack(tmp_path)
    model = Stack.from_pretrained(tmp_path, storage="mmap")
    reference = Stack.from_pretrained(tmp_path, storage="copy")
    host_ptr = model.embed.weight.data_ptr()
    block_weight = model.blocks[0].fc.weight
    residency = ComponentResidency(model, "meta", exclude=model.blocks)  # meta stands in for an accelerator
    assert residency.nbytes == 4 * (16 * 16 + 16) * 2  # embed + head, weight and bias, float32
    residency.load()
    assert model.embed.weight.is_meta and model.head.bias.is_meta
    assert model.blocks[0].fc.weight is block_weight  # excluded subtree untouched
    residency.unload()
    assert model.embed.weight.data_ptr() == host_ptr and file_backed(model.head.weight, path)
    x = torch.randn(2, 16)
    assert torch.equal(model(x), reference(x))


@linux_only
def test_streamer_keeps_mmap_weights_file_backed_on_cpu(tmp_path: Path) -> None:
    path = save_stack(tmp_path, depth=6)
    model = Stack.from_pretrained(tmp_path, storage="mmap")
    reference = Stack.from_pretrained(tmp_path, storage="copy")
    size = block_nbytes(model.blocks[0])
    streamer = LayerStreamer(model.blocks, "cpu", 3 * size)
    assert len(streamer.plan.streamed) == 5
    x = torch.randn(2, 16)
    assert torch.equal(model(x, streamer.iterate()), reference(x))
    assert all(file_backed(p, path) for p in model.blocks.parameters())  # no host copy was made
