"""Write a checkpoint folder in the diffusers layout: config.json and one or several safetensors shards.

Shards are named as diffusers names them (``<name>-00001-of-00003.safetensors`` with a
``<name>.safetensors.index.json``; one shard is ``<name>.safetensors``), so this folder loads
wherever the official one does. Every file appears whole or not at all (``framepack.atomic``).

The safetensors files are written here rather than by ``safetensors.save_file``, which
orders tensors by dtype then name (``to_k``, ``to_out.0``, ``to_q``, ``to_v``): here the
parts of each fused tensor (q|k|v…) lie back to back in fusion order, so the loader maps
the fused tensor as one view of the file instead of concatenating it into memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..atomic import replacing
from ..errors import OutputError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def save_checkpoint(
    groups: Sequence[dict[str, torch.Tensor]],
    config: dict[str, Any],
    folder: Path,
    *,
    weights_name: str,
    max_shard_bytes: int,
) -> list[Path]:
    """Write ``groups`` (checkpoint keys -> tensors) and ``config`` into ``folder``; returns the files written.

    A group is what makes one fused tensor (or one plain tensor): it is written back to back
    in its order and never split across shards. A shard holds whole groups up to
    ``max_shard_bytes`` (one larger group gets its own). Tensors are written one at a time.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in folder.glob(f"{weights_name}*.safetensors*"))
    if existing:
        raise OutputError(f"{folder} already holds checkpoint files {existing}; save into a new folder")
    shards: list[list[dict[str, torch.Tensor]]] = [[]]
    size = 0
    for group in groups:
        nbytes = sum(t.nbytes for t in group.values())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(group)
        size += nbytes
    if len(shards) == 1:
        names = [f"{weights_name}.safetensors"]
    else:
        names = [f"{weights_name}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = []
    for name, shard in zip(names, shards):
        with replacing(folder / name) as temp, open(temp, "wb") as handle:
            write_safetensors(handle, shard)
        written.append(folder / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for group in groups for t in group.values())},
            "weight_map": {key: name for name, shard in zip(names, shards) for group in shard for key in group},
        }
        written.append(_write_json(folder / f"{weights_name}.safetensors.index.json", index))
    written.append(_write_json(folder / "config.json", config))
    return written


def write_safetensors(handle: BinaryIO, groups: Sequence[dict[str, torch.Tensor]]) -> None:
    """One safetensors file: 8-byte little-endian header length, JSON header, then the data.

    Tensors go in the groups' order, widest element first (a stable sort, as safetensors
    orders by dtype), so each starts at a multiple of its element size (the header is padded
    to 8 bytes) and can be viewed in place. The parts of a fused tensor share a dtype, so
    they stay back to back in their order.
    """
    tensors = [(key, tensor) for group in groups for key, tensor in group.items()]
    tensors.sort(key=lambda item: -item[1].dtype.itemsize)
    handle.write(safetensors_header([(key, tensor.dtype, tuple(tensor.shape)) for key, tensor in tensors]))
    for _, tensor in tensors:
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        handle.write(data.numpy().data)


def safetensors_header(entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    """The 8-byte little-endian length and the JSON header (padded to 8 bytes, ``__metadata__``
    {"format": "pt"}) of tensors (key, dtype, shape) whose data follows back to back in this order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, dtype, shape in entries:
        if dtype not in _DTYPE_NAMES:
            raise OutputError(f"cannot save tensor {key!r}: dtype {dtype} has no safetensors name")
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    with replacing(path) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
