"""Read a LoRA file (or state dict) in any of the formats in circulation, and say which it is.

| format             | keys                                                                     | scale   |
|--------------------|--------------------------------------------------------------------------|---------|
| musubi / kohya     | ``lora_unet_<layer path, "." -> "_">.lora_down.weight`` [r, in],          | alpha/r |
|                    | ``.lora_up.weight`` [out, r], ``.alpha``; diffusers or original names     |         |
| diffusion-pipe     | ``diffusion_model.<original path>.lora_A.weight`` / ``.lora_B.weight``    | 1       |
|                    | (or ``.lora_down`` / ``.lora_up``; or a ``transformer.`` prefix)          |         |
| diffusers / PEFT   | ``transformer.<diffusers path>.lora_A.weight`` / ``.lora_B.weight``       | 1, or   |
|                    |                                                                          | alpha/r |

A file is read whole and checked here (every key recognised, both halves of every pair,
ranks consistent); which model layer each pair names is decided in ``resolve``.
Original HunyuanVideo paths contain ``double_blocks`` / ``single_blocks``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.loading import SafetensorsFile

KOHYA_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te"  # kohya's text-encoder LoRAs: lora_te_, lora_te1_, lora_te2_
PEFT_PREFIXES = ("diffusion_model.", "transformer.")
# key ending -> which tensor of the pair it is
KOHYA_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
PEFT_SUFFIXES = {**KOHYA_SUFFIXES, ".lora_A.weight": "down", ".lora_B.weight": "up"}


@dataclasses.dataclass(frozen=True)
class LoraPair:
    """One low-rank update: ``layer`` as the file names it (prefix and suffix stripped)."""

    layer: str
    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    alpha: float | None
    key: str  # the file's key of ``down``, for messages

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        """alpha / r; 1 when no alpha is stored (the producers then mean alpha = r)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class LoraWeights:
    """A LoRA as read: its pairs, where it came from and a digest of its content."""

    source: str  # the file's path, or "<state dict>"
    digest: str  # sha256 of the file's bytes, or of the tensors' names, dtypes, shapes and bytes
    format: str  # "musubi-framepack", "kohya-hunyuanvideo", "diffusion-pipe" or "diffusers"
    pairs: tuple[LoraPair, ...]


def load_lora(source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> LoraWeights:
    """Read a LoRA from a safetensors file or a state dict; ``CheckpointError`` names what does not fit."""
    if isinstance(source, Mapping):
        tensors = dict(source)
        bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"LoRA state dict: expected str -> tensor, got {bad[:3]!r}")
        origin, digest = "<state dict>", _tensors_digest(tensors)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise CheckpointError(f"LoRA file {path} does not exist (or is not a file)")
        file = SafetensorsFile(path)
        try:
            tensors = {k: file.tensor(k).clone() for k in file.entries}
        finally:
            file.close()
        origin, digest = str(path), _file_digest(path)
    fmt, pairs = _read(tensors, origin)
    return LoraWeights(origin, digest, fmt, pairs)


def _read(tensors: dict[str, torch.Tensor], origin: str) -> tuple[str, tuple[LoraPair, ...]]:
    keys = sorted(tensors)
    if not keys:
        raise CheckpointError(f"{origin}: the LoRA holds no tensors")
    text = [k for k in keys if k.startswith(TEXT_ENCODER_PREFIX)]
    if text:
        raise CheckpointError(
            f"{origin}: key {text[0]!r} is a text-encoder LoRA ({len(text)} such keys); only the transformer "
            "takes LoRAs here (keys lora_unet_…, diffusion_model.…, transformer.…)"
        )
    kohya = [k for k in keys if k.startswith(KOHYA_PREFIX)]
    peft = [k for k in keys if k.startswith(PEFT_PREFIXES)]
    if not kohya and not peft:
        raise CheckpointError(
            f"{origin}: unrecognised LoRA format: first keys {keys[:4]}; expected lora_unet_<layer>.lora_down.weight "
            "(musubi/kohya), diffusion_model.<layer>.lora_A.weight (diffusion-pipe) or "
            "transformer.<layer>.lora_A.weight (diffusers/PEFT)"
        )
    if len(kohya) + len(peft) != len(keys) or (kohya and peft):
        kohya_file = len(kohya) >= len(peft)  # the file's format is its majority's; name a key of the rest
        stray = next(k for k in keys if not k.startswith(KOHYA_PREFIX if kohya_file else PEFT_PREFIXES))
        expected = "lora_unet_" if kohya_file else "diffusion_model. or transformer."
        raise CheckpointError(f"{origin}: key {stray!r} does not start with {expected} as the file's other keys do")
    parts = _group(tensors, origin, KOHYA_SUFFIXES if kohya else PEFT_SUFFIXES)
    pairs = tuple(_pair(layer, found, tensors, origin) for layer, found in parts.items())
    original = any("double_blocks" in p.layer or "single_blocks" in p.layer for p in pairs)
    if kohya:
        fmt = "kohya-hunyuanvideo" if original else "musubi-framepack"
    else:
        fmt = "diffusion-pipe" if original or keys[0].startswith("diffusion_model.") else "diffusers"
    return fmt, pairs


def _group(tensors: dict[str, torch.Tensor], origin: str, suffixes: dict[str, str]) -> dict[str, dict[str, str]]:
    """Layer name -> {"down"|"up"|"alpha": key}; every key must be one of the three."""
    parts: dict[str, dict[str, str]] = {}
    for key in sorted(tensors):
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        if suffix is None:
            raise CheckpointError(
                f"{origin}: key {key!r} is not part of a LoRA pair: expected it to end in one of {list(suffixes)}"
            )
        layer = key[: -len(suffix)]
        if not key.startswith(KOHYA_PREFIX):
            layer = layer[len(next(p for p in PEFT_PREFIXES if key.startswith(p))) :]
        role = suffixes[suffix]
        found = parts.setdefault(layer, {})
        if role in found:
            raise CheckpointError(f"{origin}: keys {found[role]!r} and {key!r} are both the {role} of one layer")
        found[role] = key
    return parts


def _pair(layer: str, found: dict[str, str], tensors: dict[str, torch.Tensor], origin: str) -> LoraPair:
    """The pair of one layer, its tensors checked against each other (the layer's shape is resolve's)."""
    for role, other in (("down", "up"), ("up", "down")):
        if role not in found:
            key = found.get(other) or found["alpha"]
            raise CheckpointError(f"{origin}: key {key!r} has no matching {role} matrix of the pair (layer {layer!r})")
    down, up = tensors[found["down"]], tensors[found["up"]]
    for role, tensor in (("down", down), ("up", up)):
        if tensor.ndim != 2 or not tensor.is_floating_point():
            raise CheckpointError(
                f"{origin}: key {found[role]!r}: expected a floating-point matrix ({role} [r, in] / up [out, r]), "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )
    if up.shape[1] != down.shape[0]:
        raise CheckpointError(
            f"{origin}: key {found['up']!r}: up {list(up.shape)} does not fit down {list(down.shape)} "
            f"({found['down']!r}): expected up [out, {down.shape[0]}] (the down's rank)"
        )
    alpha = None
    if "alpha" in found:
        value = tensors[found["alpha"]]
        if value.numel() != 1:
            raise CheckpointError(f"{origin}: key {found['alpha']!r}: expected a scalar alpha, got {list(value.shape)}")
        alpha = float(value.float())
    return LoraPair(layer, down, up, alpha, found["down"])


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        sha.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
