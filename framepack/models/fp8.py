"""fp8 (float8 e4m3fn) weights: quantize, dequantize, and read the scales of the files in circulation.

Three kinds of fp8 transformer files exist (diffusers names, no prefix):

* kijai's: Linear weights stored in ``float8_e4m3fn``, no scales (the weight is the value).
* musubi-tuner ``--fp8_scaled``: ``<module>.scale_weight`` next to each fp8 weight, one per
  tensor [1], per output channel [out, 1] or per block of 64 input columns [out, in/64, 1],
  scale = max|W_block| / 448, in the original dtype. The value is ``W.to(dtype) * scale``.
* ComfyUI: a top-level ``scaled_fp8`` marker with ``.scale_weight`` (older files) or
  ``.weight_scale`` plus ``.comfy_quant`` (newer: uint8 bytes of a JSON object whose
  ``format`` names the quantization; only ``float8_e4m3fn`` is the fp8 we read).

Scales here are always brought to one of three canonical shapes, the ones ``Linear``
computes with: [1], [out, 1] or [out, in / block, 1].
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import torch

from ..errors import CheckpointError, ConfigError

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3fn value
FP8_BLOCK = 64  # input columns per scale when quantizing (musubi's --fp8_scaled)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = ("scale_weight", "weight_scale")  # musubi / older ComfyUI, newer ComfyUI
COMFY_QUANT = "comfy_quant"
MARKER = "scaled_fp8"  # ComfyUI's top-level flag: not a weight


def dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` [out, in] upcast to ``dtype`` and multiplied by ``scale``: [1], [out, 1] or [out, in / block, 1]."""
    dense = weight.to(dtype)
    if scale is None:
        return dense
    if dense.ndim != 2:  # an fp8 tensor that is no Linear weight (canonical_scale allows it one scale)
        return dense * scale.to(dtype)
    out_features, in_features = dense.shape
    factor = scale.to(dtype)
    factor = factor.reshape(factor.shape[0] if factor.ndim >= 2 else 1, factor.shape[1] if factor.ndim == 3 else 1, 1)
    return (dense.view(out_features, factor.shape[1], -1) * factor).view(out_features, in_features)


def quantize(
    weight: torch.Tensor, *, block: int | None = 64, per: str = "block", scale_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` [out, in] as e4m3fn with its scale: scale = max|W| / 448 over each group.

    ``per``: "block" (``block`` input columns; per channel where ``in`` is not a multiple of
    it), "channel", "tensor", or "none" (a plain cast, no scale: kijai's files). A group of
    zeros gets scale 1. The scale is rounded to ``scale_dtype`` (default the weight's) before
    dividing, so ``dequantize`` with the stored scale is what was meant.
    """
    out_features, in_features = weight.shape
    w = weight.detach().float()
    if per == "none":
        return w.clamp(-FP8_MAX, FP8_MAX).to(FP8), None
    if per == "block" and block and in_features % block == 0:
        groups = w.view(out_features, in_features // block, block)
    elif per in ("block", "channel"):
        groups = w.view(out_features, 1, in_features)
    elif per == "tensor":
        groups = w.view(1, 1, -1)
    else:
        raise ConfigError(f"quantize: per must be 'block', 'channel', 'tensor' or 'none', got {per!r}")
    amax = groups.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    dtype = scale_dtype or weight.dtype
    scale = scale.to(dtype).clamp_min(torch.finfo(dtype).tiny)  # a rounded-to-zero scale would give inf
    q = (groups / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(out_features, in_features)
    if per == "tensor":
        return q, scale.reshape(1)
    return q, scale if groups.shape[1] > 1 else scale.reshape(out_features, 1)


def canonical_scale(scale: torch.Tensor, weight_shape: Sequence[int], key: str) -> torch.Tensor:
    """``scale`` of a weight [out, in] in canonical form; a shape that fits none is a CheckpointError naming ``key``."""
    shape = tuple(scale.shape)
    if shape in ((), (1,)):
        return scale.reshape(1)
    if len(weight_shape) != 2:
        raise CheckpointError(
            f"fp8 scale {key!r}: expected shape [1] for a weight of shape {list(weight_shape)}, got {list(shape)}"
        )
    out_features, in_features = weight_shape
    if shape in ((out_features,), (out_features, 1)):
        return scale.reshape(out_features, 1)
    if len(shape) == 3 and shape[0] == out_features and shape[2] == 1 and shape[1] and in_features % shape[1] == 0:
        return scale
    raise CheckpointError(
        f"fp8 scale {key!r}: expected shape [1], [{out_features}, 1] or [{out_features}, n, 1] with n dividing "
        f"{in_features} (for its weight [{out_features}, {in_features}]), got {list(shape)}"
    )


def fuse_scales(scales: Sequence[torch.Tensor | None], rows: Sequence[int], in_features: int) -> torch.Tensor | None:
    """One per-row scale for parts concatenated along rows (q|k|v…): per block if any part is, else per channel.

    A part without a scale (unscaled fp8) counts as scale 1. A single part keeps its own form.
    """
    if all(s is None for s in scales):
        return None
    if len(scales) == 1:
        return scales[0]
    dtype, device = next((s.dtype, s.device) for s in scales if s is not None)
    blocks = [s.shape[1] for s in scales if s is not None and s.ndim == 3]
    n = math.lcm(*blocks) if blocks else 1  # every part's block count divides in_features, so n does too
    if in_features % n:
        raise CheckpointError(f"fp8 scales of fused parts: block counts {blocks} do not fit {in_features} columns")
    fused = []
    for scale, count in zip(scales, rows):
        if scale is None:
            scale = torch.ones(1, dtype=dtype, device=device)
        scale = scale.to(dtype)
        if scale.ndim == 3:
            fused.append(scale.repeat_interleave(n // scale.shape[1], dim=1))
        else:
            fused.append(scale.reshape(-1, 1, 1).expand(count, n, 1))
    out = torch.cat(fused)
    return out if n > 1 else out.reshape(-1, 1)


def concat_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row concatenation of fp8 tensors, through a byte view (ops on float8 are few on the CPU)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p.view(torch.uint8) for p in parts]).view(parts[0].dtype)


def split_scale(scale: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """A fused weight's scale split back into its parts' (a per-tensor scale goes to each part)."""
    if scale.shape[0] == 1 and sum(sizes) != 1:
        return [scale] * len(sizes)
    return list(scale.split(list(sizes)))


def scale_keys(weight_key: str) -> list[str]:
    """The keys a scale of checkpoint weight ``weight_key`` (``….weight``) may have."""
    base = weight_key[: -len("weight")]
    return [base + suffix for suffix in SCALE_SUFFIXES]


def find_scales(available: set[str], read: Callable[[str], torch.Tensor]) -> tuple[dict[str, str], set[str]]:
    """(weight key -> its scale key, every key that belongs to the fp8 format and is no weight).

    Checks what can be checked from the keys alone: a scale or a ``comfy_quant`` without its
    weight, two scales for one weight, a ``comfy_quant`` naming another format than e4m3fn.
    """
    scales: dict[str, str] = {}
    consumed = {MARKER} & available
    for key in sorted(available):
        base, _, suffix = key.rpartition(".")
        if suffix not in (*SCALE_SUFFIXES, COMFY_QUANT):
            continue
        weight_key = f"{base}.weight"
        if weight_key not in available:
            raise CheckpointError(f"fp8 {suffix} {key!r} has no weight: {weight_key!r} is not in the checkpoint")
        consumed.add(key)
        if suffix == COMFY_QUANT:
            _check_comfy_quant(key, read(key))
        elif weight_key in scales:
            raise CheckpointError(f"fp8 weight {weight_key!r} has two scales: {scales[weight_key]!r} and {key!r}")
        else:
            scales[weight_key] = key
    return scales, consumed


def _check_comfy_quant(key: str, value: torch.Tensor) -> None:
    try:
        config = json.loads(bytes(value.reshape(-1).to(torch.uint8).tolist()).decode("utf-8"))
        quant_format = config["format"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{key!r}: expected the JSON bytes of an object with a 'format', could not read it ({e})"
        ) from e
    if quant_format != "float8_e4m3fn":
        raise CheckpointError(f"{key!r}: quantization format {quant_format!r} is not supported (only 'float8_e4m3fn')")
