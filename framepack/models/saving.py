"""Write a checkpoint folder in the diffusers layout: config.json and one or several safetensors shards.

Shards are named as diffusers names them (``<name>-00001-of-00003.safetensors`` with a
``<name>.safetensors.index.json``; one shard is ``<name>.safetensors``), so this folder loads
wherever the official one does. Every file appears whole or not at all (``framepack.atomic``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import replacing
from ..errors import OutputError


def save_checkpoint(
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    folder: Path,
    *,
    weights_name: str,
    max_shard_bytes: int,
) -> list[Path]:
    """Write ``tensors`` (checkpoint keys) and ``config`` into ``folder``; returns the files written.

    A shard holds whole tensors up to ``max_shard_bytes`` (one larger tensor gets its own).
    Each shard's tensors are copied as it is written (safetensors refuses views of one
    storage, and the parts of a fused tensor are), so at most one shard is held twice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in folder.glob(f"{weights_name}*.safetensors*"))
    if existing:
        raise OutputError(f"{folder} already holds checkpoint files {existing}; save into a new folder")
    shards: list[list[str]] = [[]]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    if len(shards) == 1:
        names = [f"{weights_name}.safetensors"]
    else:
        names = [f"{weights_name}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = []
    for name, keys in zip(names, shards):
        with replacing(folder / name) as temp:
            save_file({k: tensors[k].detach().contiguous().clone() for k in keys}, temp, metadata={"format": "pt"})
        written.append(folder / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
            "weight_map": {key: name for name, keys in zip(names, shards) for key in keys},
        }
        written.append(_write_json(folder / f"{weights_name}.safetensors.index.json", index))
    written.append(_write_json(folder / "config.json", config))
    return written


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    with replacing(path) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
