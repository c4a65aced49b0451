"""Write a random-weight checkpoint of the real FramePack transformer, one tensor in memory at a time.

Used by ``benchmarks/full_scale.py``. Every tensor is drawn from a generator seeded by
its name (normal * 0.02; norm weights 1 + normal * 0.02; biases normal * 0.002), so the
bf16 and fp8 checkpoints hold the same model and a rerun writes the same bytes. Shards
are planned up front (names, shapes, offsets), so each header is written before its
data and no shard is ever held in memory.

Layouts (diffusers names, sharded with an index json, as the official checkpoint):
  * "bf16": every tensor bfloat16;
  * "fp8": musubi-tuner's ``--fp8_scaled`` layout: the Linear weights inside the double
    and single blocks whose names lack "norm" are float8_e4m3fn with a ``<module>.scale_weight``
    [out, in / 64, 1] (bfloat16, max |W| of each 64-column block / 448); everything else
    (modulation ``norm*.linear``, biases, embedders, refiner, heads) stays bfloat16.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from framepack.models.loading import to_checkpoint_state_dict
from framepack.models.transformer import FramePackTransformer, TransformerConfig

FP8_BLOCK = 64
FP8_MAX = 448.0
_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3", torch.float32: "F32"}
WEIGHTS_NAME = "diffusion_pytorch_model"


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


def model_tensors(config: TransformerConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The checkpoint keys and shapes of the model, in its state-dict order (blocks stay together)."""
    with torch.device("meta"):
        model = FramePackTransformer(config)
    return [(key, tuple(t.shape)) for key, t in to_checkpoint_state_dict(model).items()]


def fp8_quantized(key: str, shape: tuple[int, ...]) -> bool:
    """musubi's rule: Linear weights inside the blocks, except names containing "norm"."""
    in_blocks = key.startswith(("transformer_blocks.", "single_transformer_blocks."))
    return in_blocks and key.endswith(".weight") and len(shape) == 2 and "norm" not in key


def layout(tensors: list[tuple[str, tuple[int, ...]]], fmt: str) -> list[Entry]:
    """The entries of one format, each model tensor followed by its scale where quantized."""
    entries = []
    for key, shape in tensors:
        if fmt == "fp8" and fp8_quantized(key, shape):
            entries.append(Entry(key, torch.float8_e4m3fn, shape))
            scale_key = key.removesuffix(".weight") + ".scale_weight"
            entries.append(Entry(scale_key, torch.bfloat16, (shape[0], shape[1] // FP8_BLOCK, 1)))
        else:
            entries.append(Entry(key, torch.bfloat16, shape))
    return entries


def plan_shards(entries: list[Entry], max_shard_bytes: int) -> list[list[Entry]]:
    """Consecutive entries packed into shards of at most ``max_shard_bytes`` (one bigger tensor gets its own)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def header_bytes(shard: list[Entry]) -> bytes:
    """The safetensors header (8-byte length + JSON padded to 8 bytes) of a shard whose data follows in order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in shard:
        header[e.key] = {
            "dtype": _DTYPE_NAMES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def random_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 value of one tensor, seeded by its name."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    values = torch.randn(shape, generator=g)
    if len(shape) == 1 and key.endswith(".weight"):  # norm weights
        return values.mul_(0.02).add_(1.0)
    return values.mul_(0.002 if key.endswith(".bias") else 0.02)


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn weight, bfloat16 scale [out, in / 64, 1]) with per-block scales, dequantized with the stored scale."""
    out_features, in_features = weight.shape
    blocks = weight.view(out_features, in_features // FP8_BLOCK, FP8_BLOCK)
    scale = (blocks.abs().amax(dim=-1, keepdim=True) / FP8_MAX).to(torch.bfloat16)
    divisor = scale.float().clamp_min(torch.finfo(torch.float32).tiny)
    quantized = (blocks / divisor).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return quantized.view(out_features, in_features), scale


def encoded(key: str, shape: tuple[int, ...], formats: list[str]) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """For each format, the stored tensors of one model tensor (its weight, and its scale where quantized)."""
    value = random_tensor(key, shape)
    for fmt in formats:
        if fmt == "fp8" and fp8_quantized(key, shape):
            quantized, scale = quantize_fp8(value)
            yield fmt, {key: quantized, key.removesuffix(".weight") + ".scale_weight": scale}
        else:
            yield fmt, {key: value.to(torch.bfloat16)}


def write_checkpoints(
    config: TransformerConfig, folders: dict[str, Path], max_shard_bytes: int = 5 * 2**30
) -> dict[str, int]:
    """Write every format of ``folders`` (format -> folder) in one pass over the tensors; returns bytes per format."""
    tensors = model_tensors(config)
    formats = list(folders)
    shards = {fmt: plan_shards(layout(tensors, fmt), max_shard_bytes) for fmt in formats}
    where: dict[str, dict[str, int]] = {fmt: {} for fmt in formats}  # key -> shard index
    for fmt, planned in shards.items():
        folder = folders[fmt]
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{WEIGHTS_NAME}-{i + 1:05d}-of-{len(planned):05d}.safetensors" for i in range(len(planned))]
        for i, shard in enumerate(planned):
            where[fmt].update((e.key, i) for e in shard)
        total = sum(e.nbytes for shard in planned for e in shard)
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in where[fmt].items()}}
        (folder / f"{WEIGHTS_NAME}.safetensors.index.json").write_text(json.dumps(index, indent=1))
        config_json = {"_class_name": "HunyuanVideoTransformer3DModelPacked", **config.to_dict()}
        (folder / "config.json").write_text(json.dumps(config_json, indent=1))
    open_files: dict[str, tuple[int, object]] = {}
    try:
        for key, shape in tensors:
            for fmt, stored in encoded(key, shape, formats):
                for name, tensor in stored.items():
                    i = where[fmt][name]
                    current = open_files.get(fmt)
                    if current is None or current[0] != i:
                        if current is not None:
                            current[1].close()
                        planned = shards[fmt]
                        path = folders[fmt] / f"{WEIGHTS_NAME}-{i + 1:05d}-of-{len(planned):05d}.safetensors"
                        handle = open(path, "wb")  # noqa: SIM115 (kept open across tensors; closed above/below)
                        handle.write(header_bytes(planned[i]))
                        open_files[fmt] = current = (i, handle)
                    current[1].write(tensor.contiguous().view(torch.uint8).numpy().data)
    finally:
        for _, handle in open_files.values():
            handle.close()
    return {fmt: sum(e.nbytes for shard in planned for e in shard) for fmt, planned in shards.items()}
