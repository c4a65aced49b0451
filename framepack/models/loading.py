"""Find a checkpoint (local folder or hub repo), read its safetensors, load it strictly.

Only safetensors is read, never pickle. The header of every shard is parsed and checked
against the file size before any tensor is touched, so a truncated or corrupt file is
reported by name. Models are built on the meta device and each parameter is filled
exactly once from the file (``storage="copy"``) or left memory-mapped on it
(``storage="mmap"``), so peak host memory stays near one copy of the weights. A tensor
fused from several checkpoint tensors (q|k|v…) is one view of the file too when its parts lie
back to back in fusion order, as ``save_pretrained`` writes them; otherwise it is concatenated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import mmap
import os
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..memory import mapped_pages
from ..precision import default_dtype
from . import fp8
from .configuration import ModelConfig
from .linear import Linear
from .saving import SAFETENSORS_DTYPES, save_checkpoint

logger = logging.getLogger("framepack")

Storage = Literal["copy", "mmap"]
Weights = Literal["fp8"] | None
ModelT = TypeVar("ModelT", bound="PretrainedModel")

_MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsFile:
    """One safetensors file: a validated header and zero-copy access to its tensors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (open for the object's life; close() ends it)
        except OSError as e:
            raise CheckpointError(f"cannot open checkpoint file {self.path}: {e}") from e
        try:
            self.entries, self._data_start = self._read_header()
            size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
            if self._map is not None:  # a streamer may drop the pages of blocks it has copied
                mapped_pages.register(self._map)
        except Exception:
            self._file.close()
            raise

    def _read_header(self) -> tuple[dict[str, tuple[torch.dtype, tuple[int, ...], int, int]], int]:
        size = os.fstat(self._file.fileno()).st_size
        raw_len = self._file.read(8)
        if len(raw_len) < 8:
            raise CheckpointError(f"{self.path} is not a safetensors file: {size} bytes, too short for a header")
        header_len = int.from_bytes(raw_len, "little")
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(
                f"{self.path} is corrupt or truncated: header claims {header_len} bytes, file has {size - 8}"
            )
        try:
            header = json.loads(self._file.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path} is corrupt: its header is not valid JSON ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path} is corrupt: its header is not a JSON object")
        data_start = 8 + header_len
        data_size = size - data_start
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{self.path} is corrupt: bad header entry for {name!r}: {info!r}") from e
            expected = math.prod(shape) * dtype.itemsize
            if end - begin != expected or begin < 0:
                raise CheckpointError(
                    f"{self.path} is corrupt: tensor {name!r} {info['dtype']}{list(shape)} needs {expected} bytes, "
                    f"header gives {end - begin}"
                )
            if end > data_size:
                raise CheckpointError(
                    f"{self.path} is truncated: tensor {name!r} ends at byte {end} of the data section, "
                    f"which has only {data_size} bytes"
                )
            entries[name] = (dtype, shape, begin, end)
        return entries, data_start

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor that views the mapped file (copy-on-write: the file is never modified)."""
        dtype, shape, begin, end = self.entries[name]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(self._map, dtype=torch.uint8, count=end - begin, offset=self._data_start + begin)
        return flat.view(dtype).reshape(shape)

    def span(self, names: Sequence[str]) -> torch.Tensor | None:
        """The concatenation along dim 0 of tensors ``names`` as one view of the mapped file, when
        they lie back to back in that order with one dtype and equal trailing dims; else None."""
        entries = [self.entries[name] for name in names]
        dtype, shape, first, _ = entries[0]
        if not shape or any(e[0] != dtype or len(e[1]) != len(shape) or e[1][1:] != shape[1:] for e in entries):
            return None
        if any(a[3] != b[2] for a, b in pairwise(entries)) or entries[-1][3] == first:
            return None
        nbytes = entries[-1][3] - first
        flat = torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes, offset=self._data_start + first)
        return flat.view(dtype).reshape(sum(e[1][0] for e in entries), *shape[1:])

    def close(self) -> None:
        # A mapping still viewed by mmap-stored parameters must stay open; it is freed with them.
        self._file.close()
        if self._map is not None:  # whatever else loading read (load_checkpoint drops pages tensor by tensor)
            mapped_pages.release_mapping(self._map)


def checkpoint_files(folder: Path, weights_name: str) -> list[Path]:
    """The safetensors files of a checkpoint: sharded (with an index json) or single."""
    index_path = folder / f"{weights_name}.safetensors.index.json"
    single_path = folder / f"{weights_name}.safetensors"
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot read the shard index {index_path}: {e}") from e
        missing = [name for name in shard_names if not (folder / name).exists()]
        if missing:
            raise CheckpointError(f"shard(s) {missing} listed in {index_path.name} are missing from {folder}")
        return [folder / name for name in shard_names]
    if single_path.exists():
        return [single_path]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise CheckpointError(
        f"no weights in {folder}: expected {single_path.name} or {index_path.name}"
        + (f"; found {found}" if found else "")
        + (" (pickle .bin checkpoints are not read)" if any(folder.glob("*.bin")) else "")
    )


def resolve_folder(
    source: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    patterns: Sequence[str] = ("config.json", "*.safetensors", "*.safetensors.index.json"),
) -> Path:
    """A local folder holding the checkpoint: ``source`` itself, or a hub snapshot of it."""
    local = Path(source).expanduser()
    if local.exists():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder (source {str(source)!r}, subfolder {subfolder!r})")
        return folder
    repo_id = str(source)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise CheckpointError(f"{repo_id!r} is neither an existing folder nor a hub repo id like 'owner/name'")
    from huggingface_hub import snapshot_download  # imported here: only hub sources need it

    prefix = f"{subfolder}/" if subfolder else ""
    try:
        snapshot = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=[prefix + p for p in patterns])
    except Exception as e:  # hub errors come in many classes; all mean "could not get it"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"cannot download {repo_id!r}{f' (subfolder {subfolder!r})' if subfolder else ''} from the hub ({reason}). "
            "Pass a local folder instead when offline."
        ) from e
    folder = Path(snapshot) / subfolder if subfolder else Path(snapshot)
    if not folder.is_dir():
        raise CheckpointError(f"hub repo {repo_id!r} has no subfolder {subfolder!r}")
    return folder


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """One row of a model's checkpoint-key table: our module path and the checkpoint's.

    ``ours`` and each ``checkpoint`` path are dotted paths (of a module or a tensor); ``*``
    stands for one segment (a block index) and takes the same value on both sides. A tensor
    whose name is or starts with ``ours`` takes the checkpoint path with the rest of its name appended
    (``double_blocks.3.image_qkv.bias`` -> ``transformer_blocks.3.attn.to_q.bias``…). Several
    checkpoint paths mean a fused tensor: their tensors are concatenated along dim 0 at
    load time, in that order, and split back by ``sizes`` (rows of each; equal parts when
    None) when a model is saved in the checkpoint layout.
    """

    ours: str
    checkpoint: tuple[str, ...]
    sizes: tuple[int, ...] | None = None

    def checkpoint_keys(self, name: str) -> list[str] | None:
        """The checkpoint keys of our tensor ``name``, or None if this rule does not cover it."""
        segments, pattern = name.split("."), self.ours.split(".")
        if len(segments) < len(pattern):
            return None
        stars = []
        for segment, wanted in zip(segments, pattern):
            if wanted == "*":
                stars.append(segment)
            elif wanted != segment:
                return None
        rest = segments[len(pattern) :]
        keys = []
        for path in self.checkpoint:
            values = iter(stars)
            keys.append(".".join([next(values) if part == "*" else part for part in path.split(".")] + rest))
        return keys


def key_rule(ours: str, *checkpoint: str, sizes: tuple[int, ...] | None = None) -> KeyRule:
    """``KeyRule(ours, checkpoint, sizes)``: one checkpoint path renames, several fuse."""
    return KeyRule(ours, checkpoint, sizes)


def rule_for(table: Sequence[KeyRule], name: str) -> KeyRule | None:
    """The first rule of ``table`` that covers our tensor ``name``, if any."""
    return next((rule for rule in table if rule.checkpoint_keys(name) is not None), None)


def checkpoint_keys_of(table: Sequence[KeyRule], name: str) -> list[str]:
    """The checkpoint keys of our tensor ``name``: by the first rule of ``table`` covering it, else the name itself."""
    rule = rule_for(table, name)
    return [name] if rule is None else rule.checkpoint_keys(name)


class PretrainedModel(nn.Module):
    """A model with a config dataclass that loads strictly from a checkpoint folder.

    Subclasses set ``config_class`` and ``weights_name`` and build themselves in
    ``__init__(config)``. Modules are named for what they do; ``checkpoint_keys`` is the
    model's one table from those names to the checkpoint's (renamed and fused tensors), and
    both loading and ``to_checkpoint_state_dict`` read it. Override
    ``ignored_checkpoint_keys`` for checkpoint tensors the model deliberately does not use,
    and ``keep_float32`` for parameters that stay float32 whatever dtype is asked for.
    """

    config_class: ClassVar[type[ModelConfig]]
    weights_name: ClassVar[str] = "diffusion_pytorch_model"

    # A prefix some checkpoints put before every key and others omit (transformers 4.x writes
    # `text_model.` / `vision_model.`, 5.x does not); either form loads.
    optional_key_prefix: ClassVar[str] = ""
    checkpoint_class_name: ClassVar[str | None] = None  # config.json's "_class_name" in a saved folder

    def checkpoint_prefix(self, available: set[str]) -> str:
        """``optional_key_prefix`` if these checkpoint keys carry it, else ""."""
        prefix = self.optional_key_prefix
        return prefix if prefix and any(k.startswith(prefix) for k in available) else ""

    def checkpoint_keys(self) -> Sequence[KeyRule]:
        """The table from our module paths to the checkpoint's; tensors no rule covers keep their name."""
        return ()

    def checkpoint_layout(self, available: set[str]) -> dict[str, list[str]]:
        """Model tensor name -> checkpoint keys concatenated along dim 0 to make it."""
        prefix = self.checkpoint_prefix(available)
        table = self.checkpoint_keys()
        return {
            name: [prefix + key for key in checkpoint_keys_of(table, name)] for name in self.state_dict(keep_vars=True)
        }

    def ignored_checkpoint_keys(self, available: set[str]) -> set[str]:
        return set()

    def keep_float32(self, name: str) -> bool:
        return False

    def fp8_quantizable(self, name: str) -> bool:
        """Whether ``weights="fp8"`` / ``quantize_fp8`` store our tensor ``name`` in fp8 (a subclass names them)."""
        return False

    @torch.no_grad()
    def quantize_fp8(self, block: int = 64) -> None:
        """Store every ``fp8_quantizable`` weight in fp8 with a scale per ``block`` input columns
        (per channel where they do not divide), one layer at a time."""
        _check_fp8_block(block)
        if getattr(self, "streamer", None) is not None:
            raise ConfigError(f"{type(self).__name__}.quantize_fp8(): disable streaming first (its copies would stay)")
        for module_name, module in self.named_modules():
            name = f"{module_name}.weight"
            if isinstance(module, Linear) and self.fp8_quantizable(name) and module.weight.dtype != fp8.FP8:
                weight, scale = fp8.quantize(module.weight, block=block, scale_dtype=module.compute_dtype)
                module.weight = nn.Parameter(weight, requires_grad=False)
                module.weight_scale = scale

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in: that of its weights (``keep_float32`` ones aside)."""
        return self._placed_weight().dtype

    @property
    def device(self) -> torch.device:
        """The device the model computes on now: where its weights are. A streamed model
        reports where its non-block weights are (the device while loaded, the host after
        ``unload()``); its streamed blocks come and go and do not count."""
        return self._placed_weight().device

    def _placed_weight(self) -> torch.Tensor:
        """A weight in the compute dtype that is never streamed nor kept on the host: the
        first parameter, unless a subclass names another."""
        return next(self.parameters())

    def save_pretrained(self, folder: str | os.PathLike[str], *, max_shard_bytes: int = 5 * 2**30) -> list[Path]:
        """Write config.json and the weights in the checkpoint layout (``to_checkpoint_state_dict``:
        fused tensors split back, fp8 weights as F8_E4M3 with a ``.scale_weight`` per part), which
        ``from_pretrained`` reads back bit for bit. Returns the files written."""
        adapted = [name for name, m in self.named_modules() if isinstance(m, Linear) and m.lora]
        if adapted:
            raise ConfigError(f"save_pretrained: remove the run-time LoRA adapters first (on {_short(adapted)})")
        config = self.config.to_dict()  # type: ignore[attr-defined]
        if self.checkpoint_class_name:
            config = {"_class_name": self.checkpoint_class_name, **config}
        return save_checkpoint(
            checkpoint_groups(self),
            config,
            Path(folder),
            weights_name=self.weights_name,
            max_shard_bytes=max_shard_bytes,
        )

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        source: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        storage: Storage = "copy",
        weights: Weights = None,
        fp8_block: int = fp8.FP8_BLOCK,
    ) -> ModelT:
        """``weights="fp8"`` stores the ``fp8_quantizable`` weights of a full-precision checkpoint in
        fp8 as they load (scale per ``fp8_block`` input columns); fp8 files load as fp8 either way."""
        if weights not in (None, "fp8"):
            raise ConfigError(f"weights must be None or 'fp8', got {weights!r}")
        _check_fp8_block(fp8_block)
        folder = resolve_folder(source, subfolder=subfolder, revision=revision)
        config = cls.config_class.from_json(folder / "config.json")
        with torch.device("meta"):
            model = cls(config)  # type: ignore[call-arg]
        load_checkpoint(
            model,
            checkpoint_files(folder, cls.weights_name),
            dtype=dtype or default_dtype(device),
            device=torch.device(device),
            storage=storage,
            fp8_block=fp8_block if weights == "fp8" else None,
        )
        return model.eval()


def load_checkpoint(
    model: PretrainedModel,
    files: Iterable[Path | SafetensorsFile],
    *,
    dtype: torch.dtype,
    device: torch.device,
    storage: Storage = "copy",
    fp8_block: int | None = None,
) -> None:
    """Fill every tensor of a meta-device ``model`` from ``files``; strict about keys and shapes.

    A file may come already open (a ``SafetensorsFile`` whose keys a single-file reader
    renamed); it is closed here like the others. fp8 weights of our ``Linear`` layers stay
    fp8 (their scales, fused like the weights, become the layer's ``weight_scale``); any
    other fp8 tensor is dequantized to ``dtype``. With ``fp8_block`` the model's
    ``fp8_quantizable`` weights are quantized as they load.
    """
    if storage not in ("copy", "mmap"):
        raise CheckpointError(f"storage must be 'copy' or 'mmap', got {storage!r}")
    if storage == "mmap" and device.type != "cpu":
        raise CheckpointError(f"storage='mmap' keeps weights in host memory; device must be cpu, got {device}")
    shards = [p if isinstance(p, SafetensorsFile) else SafetensorsFile(p) for p in files]
    try:
        where: dict[str, SafetensorsFile] = {}
        for shard in shards:
            for key in shard.entries:
                if key in where:
                    raise CheckpointError(
                        f"tensor {key!r} appears in both {where[key].path.name} and {shard.path.name}"
                    )
                where[key] = shard
        scale_keys, fp8_keys = fp8.find_scales(set(where), lambda k: where[k].tensor(k))
        available = set(where) - fp8_keys
        layout = model.checkpoint_layout(available)
        targets = dict(model.state_dict(keep_vars=True))
        _check_layout(model, layout, targets, where, available)

        copied_bytes = 0
        for name, keys in layout.items():
            parts = [where[k].tensor(k) for k in keys]
            view = _file_view(where, keys, parts)  # fused parts stored back to back need no concatenation
            target_dtype = torch.float32 if model.keep_float32(name) else dtype
            scales = [_scale_of(where, scale_keys, k, part, target_dtype, storage) for k, part in zip(keys, parts)]
            if any(s is not None for s in scales) or any(p.dtype in fp8.FP8_DTYPES for p in parts):
                scale_view = _scale_view(where, scale_keys, keys, target_dtype, storage)
                tensor, scale = _fp8_tensor(model, name, parts, scales, target_dtype, view, scale_view)
                if tensor.dtype != fp8.FP8:
                    copied_bytes += tensor.nbytes  # dequantized
                elif storage == "copy" and tensor is view and device.type == "cpu":
                    tensor = tensor.clone()  # detach from the mapping, as below
                _assign_weight(model, name, tensor.to(device), None if scale is None else scale.to(device))
                mapped_pages.release(parts)  # as below
                continue
            tensor = view if view is not None else torch.cat(parts, dim=0)
            converted = tensor.is_floating_point() and tensor.dtype != target_dtype
            if converted:
                tensor = tensor.to(target_dtype)
                copied_bytes += tensor.nbytes
            if fp8_block is not None and model.fp8_quantizable(name):  # new tensors: nothing stays mapped
                _assign_weight(model, name, *(t.to(device) for t in fp8.quantize(tensor, block=fp8_block)))
                mapped_pages.release(parts)  # as below
                continue
            if not converted and storage == "copy" and view is not None and device.type == "cpu":
                tensor = tensor.clone()  # detach from the mapping so the file can be released
            tensor = tensor.to(device)
            _assign(model, name, tensor, requires_grad=False)
            mapped_pages.release(parts)  # read to concatenate or cast: not needed again (mapped ones re-read on use)
        if storage == "mmap" and copied_bytes:
            logger.warning(
                "%s: %.1f MiB of weights are stored in another dtype than %s and were copied, not mapped",
                type(model).__name__,
                copied_bytes / 2**20,
                dtype,
            )
    finally:
        for shard in shards:
            shard.close()
    unfilled = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unfilled:
        raise CheckpointError(f"{type(model).__name__} tensors left unfilled after loading: {_short(unfilled)}")


def to_checkpoint_state_dict(model: PretrainedModel) -> dict[str, torch.Tensor]:
    """``model``'s tensors under the checkpoint's keys, fused tensors split back: what a checkpoint file holds."""
    return {key: tensor for group in checkpoint_groups(model) for key, tensor in group.items()}


def checkpoint_groups(model: PretrainedModel) -> list[dict[str, torch.Tensor]]:
    """``to_checkpoint_state_dict`` as one dict per tensor of ours (its parts, in fusion order),
    in the model's order: the writer keeps each group back to back so the loader can map it whole."""
    table = model.checkpoint_keys()
    groups = []
    for name, tensor in model.state_dict().items():
        keys = checkpoint_keys_of(table, name)
        if len(keys) == 1:
            parts = [tensor]
        elif name.endswith(".weight_scale"):  # an fp8 scale, per row or per tensor: each part gets its rows
            parts = fp8.split_scale(tensor, _part_sizes(table, name, tensor, keys))
        else:
            parts = list(tensor.split(_part_sizes(table, name, tensor, keys)))
        # fp8 scales under musubi's name, which our loader, musubi and ComfyUI read
        groups.append({_scale_weight_key(k): t for k, t in zip(keys, parts)})
    return groups


def _part_sizes(table: Sequence[KeyRule], name: str, tensor: torch.Tensor, keys: list[str]) -> list[int]:
    sizes = rule_for(table, name).sizes
    return list(sizes) if sizes else [tensor.shape[0] // len(keys)] * len(keys)


def from_checkpoint_state_dict(model: PretrainedModel, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``to_checkpoint_state_dict``: checkpoint tensors under our names, fused where we fuse."""
    layout = model.checkpoint_layout(set(tensors))
    out = {}
    for name, keys in layout.items():
        if name.endswith(".weight_scale"):  # saved as .scale_weight per part; fused as the loader fuses them
            weights = [tensors[k[: -len("weight_scale")] + "weight"] for k in keys]
            parts = [tensors[_scale_weight_key(k)] for k in keys]
            out[name] = fp8.fuse_scales(parts, [w.shape[0] for w in weights], weights[0].shape[1])
        else:
            out[name] = torch.cat([tensors[k] for k in keys]) if len(keys) > 1 else tensors[keys[0]]
    return out


def _check_layout(
    model: PretrainedModel,
    layout: dict[str, list[str]],
    targets: dict[str, torch.Tensor],
    where: dict[str, SafetensorsFile],
    available: set[str],
) -> None:
    problems = []
    uncovered = sorted(set(targets) - set(layout))
    if uncovered:
        problems.append(f"model tensors with no checkpoint source: {_short(uncovered)}")
    used = {k for keys in layout.values() for k in keys}
    missing = sorted(used - available)
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    unexpected = sorted(available - used - model.ignored_checkpoint_keys(available))
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    mismatched = []
    for name, keys in layout.items():
        if any(k not in available for k in keys) or name not in targets:
            continue
        shapes = [where[k].shape(k) for k in keys]
        total = (sum(s[0] for s in shapes), *shapes[0][1:]) if shapes[0] else ()
        want = tuple(targets[name].shape)
        if total != want or any(s[1:] != shapes[0][1:] for s in shapes):
            mismatched.append(f"{'+'.join(keys)}: checkpoint {list(total)} vs model {list(want)}")
    if mismatched:
        problems.append(f"shape mismatches: {_short(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint does not match {type(model).__name__}: " + "; ".join(problems))


def _check_fp8_block(block: int) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"fp8_block must be a positive number of input columns, got {block!r}")


def _scale_weight_key(key: str) -> str:
    return key[: -len("weight_scale")] + "scale_weight" if key.endswith(".weight_scale") else key


def _scale_of(
    where: dict[str, SafetensorsFile],
    scale_keys: dict[str, str],
    key: str,
    part: torch.Tensor,
    dtype: torch.dtype,
    storage: Storage,
) -> torch.Tensor | None:
    """The canonical scale of checkpoint weight ``key`` in ``dtype``, or None when it has none;
    a view of the file where ``storage="mmap"`` and the dtype is already ``dtype``."""
    scale_key = scale_keys.get(key)
    if scale_key is None:
        return None
    scale = fp8.canonical_scale(where[scale_key].tensor(scale_key), part.shape, scale_key).to(dtype)
    return scale if storage == "mmap" else scale.clone()


def _file_view(where: dict[str, SafetensorsFile], keys: list[str], parts: list[torch.Tensor]) -> torch.Tensor | None:
    """Our tensor as one view of the mapped file: its only part, or its parts stored back to back
    in one shard (as our writers store them); None when the parts must be concatenated."""
    if len(parts) == 1:
        return parts[0]
    shard = where[keys[0]]
    return shard.span(keys) if all(where[k] is shard for k in keys) else None


def _scale_view(
    where: dict[str, SafetensorsFile], scale_keys: dict[str, str], keys: list[str], dtype: torch.dtype, storage: Storage
) -> torch.Tensor | None:
    """The fused scale of several fp8 parts without ``fp8.fuse_scales``: one view of the file when
    every part has a scale per block of one width, stored back to back (cast to ``dtype``; a copy
    for ``storage="copy"``); else None. Each scale's shape is checked by ``_scale_of`` first."""
    names = [scale_keys.get(k) for k in keys]
    if len(keys) == 1 or None in names:
        return None
    view = _file_view(where, names, [where[n].tensor(n) for n in names])
    if view is None or view.ndim != 3:
        return None
    view = view.to(dtype)
    if storage == "copy":
        view = view.clone()
    return view if view.shape[1] > 1 else view.reshape(-1, 1)  # fuse_scales' per-channel form


def _fp8_tensor(
    model: nn.Module,
    name: str,
    parts: list[torch.Tensor],
    scales: list[torch.Tensor | None],
    dtype: torch.dtype,
    view: torch.Tensor | None,
    scale_view: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tensor, scale) of our tensor ``name`` from checkpoint parts some of which are fp8 or scaled:
    fp8 for a ``Linear`` weight whose parts are all e4m3fn, else dequantized to ``dtype`` (scale None).
    ``view``/``scale_view``: the fused weight/scale as views of the file (``_file_view``, ``_scale_view``) or None."""
    module_name, _, attr = name.rpartition(".")
    if (
        attr == "weight"
        and isinstance(model.get_submodule(module_name), Linear)
        and all(p.dtype == fp8.FP8 for p in parts)
    ):
        weight = view if view is not None else fp8.concat_rows(parts)
        if scale_view is not None:
            return weight, scale_view
        return weight, fp8.fuse_scales(scales, [p.shape[0] for p in parts], parts[0].shape[1])
    return torch.cat([fp8.dequantize(p, s, dtype) for p, s in zip(parts, scales)]), None


def _assign_weight(model: nn.Module, name: str, tensor: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Our tensor ``name`` and, for an fp8 ``Linear`` weight with a scale, the layer's ``weight_scale``."""
    _assign(model, name, tensor, requires_grad=False)
    if scale is not None:
        _assign(model, name[: -len("weight")] + "weight_scale", scale, requires_grad=False)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor, *, requires_grad: bool) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=requires_grad)
    else:
        module._buffers[attr] = tensor


def _short(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown} (+{len(items) - limit} more)" if len(items) > limit else shown


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a checkpoint folder (tokenizer or preprocessor settings)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} does not exist") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
