"""Write a random-weight checkpoint of the real FramePack transformer, one fused tensor in memory at a time.

Used by ``benchmarks/full_scale.py``. Every tensor is drawn from a generator seeded by
its name (normal * 0.02; norm weights 1 + normal * 0.02; biases normal * 0.002), so the
bf16 and fp8 checkpoints hold the same model and a rerun writes the same bytes. Shards
are planned up front (names, shapes, offsets), so each header is written before its
data and no shard is ever held in memory. As ``save_pretrained`` writes them, the parts of
each of our fused tensors (q|k|v, q|k|v|proj_mlp, the two modulations) lie back to back in
fusion order in one shard (fp8: the weight parts, then their scales), so the loader maps the
fused tensor as one view of the file instead of concatenating it.

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

from framepack.models.loading import checkpoint_groups
from framepack.models.saving import safetensors_header
from framepack.models.transformer import FramePackTransformer, TransformerConfig

FP8_BLOCK = 64
FP8_MAX = 448.0
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


Group = list[tuple[str, tuple[int, ...]]]


def model_tensors(config: TransformerConfig) -> list[Group]:
    """The checkpoint keys and shapes of the model, one group per tensor of ours (its parts in
    fusion order), in its state-dict order (blocks stay together)."""
    with torch.device("meta"):
        model = FramePackTransformer(config)
    return [[(key, tuple(t.shape)) for key, t in group.items()] for group in checkpoint_groups(model)]


def fp8_quantized(key: str, shape: tuple[int, ...]) -> bool:
    """musubi's rule: Linear weights inside the blocks, except names containing "norm"."""
    in_blocks = key.startswith(("transformer_blocks.", "single_transformer_blocks."))
    return in_blocks and key.endswith(".weight") and len(shape) == 2 and "norm" not in key


def layout(groups: list[Group], fmt: str) -> list[list[Entry]]:
    """The entries of one format, group by group: the parts, then their scales where quantized."""
    out = []
    for group in groups:
        entries, scales = [], []
        for key, shape in group:
            if fmt == "fp8" and fp8_quantized(key, shape):
                entries.append(Entry(key, torch.float8_e4m3fn, shape))
                scale_key = key.removesuffix(".weight") + ".scale_weight"
                scales.append(Entry(scale_key, torch.bfloat16, (shape[0], shape[1] // FP8_BLOCK, 1)))
            else:
                entries.append(Entry(key, torch.bfloat16, shape))
        out.append(entries + scales)
    return out


def plan_shards(groups: list[list[Entry]], max_shard_bytes: int) -> list[list[Entry]]:
    """Consecutive groups packed whole into shards of at most ``max_shard_bytes`` (one bigger group gets its own)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for group in groups:
        nbytes = sum(e.nbytes for e in group)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += nbytes
    return shards


def header_bytes(shard: list[Entry]) -> bytes:
    """The safetensors header of a shard whose data follows in order."""
    offset = 0
    for e in shard:
        if offset % e.dtype.itemsize:  # the loader views each tensor in place
            raise ValueError(f"{e.key} would start at byte {offset}, not a multiple of its element size")
        offset += e.nbytes
    return safetensors_header([(e.key, e.dtype, tuple(e.shape)) for e in shard])


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


def encoded(group: Group, formats: list[str]) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """For each format, the stored tensors of one group (its parts, and their scales where quantized)."""
    values = {key: random_tensor(key, shape) for key, shape in group}
    for fmt in formats:
        stored, scales = {}, {}
        for key, shape in group:
            if fmt == "fp8" and fp8_quantized(key, shape):
                stored[key], scales[key.removesuffix(".weight") + ".scale_weight"] = quantize_fp8(values[key])
            else:
                stored[key] = values[key].to(torch.bfloat16)
        yield fmt, stored | scales  # in ``layout``'s order


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
    order = {fmt: iter([e.key for shard in planned for e in shard]) for fmt, planned in shards.items()}
    try:
        for group in tensors:
            for fmt, stored in encoded(group, formats):
                for name, tensor in stored.items():
                    if next(order[fmt]) != name:  # the headers' offsets assume the planned order
                        raise RuntimeError(f"{name} written out of the planned order")
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
