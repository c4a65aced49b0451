"""Which layer, and which output rows of it, each pair of a LoRA acts on.

The table is built from the model itself: every ``Linear`` of it under the diffusers
name(s) its weight has in the checkpoint (``checkpoint_keys``: a fused layer such as
``double_blocks.N.image_qkv`` answers to ``attn.to_q``, ``attn.to_k``, ``attn.to_v``, each
on its rows), the original HunyuanVideo names (``names``; a fused original layer is one
pair on the whole row range of our fused layer, nothing split), and each of these names in
kohya spelling, ``"lora_unet_" + name.replace(".", "_")`` (``_`` also occurs inside layer
names, so the underscores cannot be turned back into dots by rule).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.linear import Linear
from ..models.loading import PretrainedModel, checkpoint_keys_of, rule_for
from .formats import KOHYA_PREFIX, LoraWeights
from .names import original_layer_names


@dataclasses.dataclass(frozen=True)
class Target:
    """Rows ``rows`` of our layer ``layer``."""

    layer: str
    rows: slice


@dataclasses.dataclass(frozen=True)
class ResolvedPair:
    """A pair placed on our layer: ``layer.weight[rows] += strength * scale * up @ down``."""

    layer: str
    rows: slice
    down: torch.Tensor
    up: torch.Tensor
    scale: float


def diffusers_layers(model: PretrainedModel) -> dict[str, Target]:
    """Each diffusers layer name -> our ``Linear`` and its rows there (several share a fused layer)."""
    table = model.checkpoint_keys()
    out: dict[str, Target] = {}
    for name, module in model.named_modules():
        if not isinstance(module, Linear):
            continue
        keys = checkpoint_keys_of(table, f"{name}.weight")
        rule = rule_for(table, f"{name}.weight")
        sizes = rule.sizes if rule is not None and rule.sizes else [module.out_features // len(keys)] * len(keys)
        start = 0
        for key, size in zip(keys, sizes):
            out[key.removesuffix(".weight")] = Target(name, slice(start, start + size))
            start += size
    return out


def layer_table(model: PretrainedModel, num_double: int, num_single: int) -> dict[str, Target]:
    """Every name a LoRA may give one of ``model``'s layers: diffusers, original and kohya spellings."""
    table = diffusers_layers(model)
    for original, parts in original_layer_names(num_double, num_single).items():
        targets = [table[p] for p in parts]
        first, last = targets[0], targets[-1]
        # One pair on the fused weight equals the split pairs only where the parts are its consecutive rows.
        if any(t.layer != first.layer for t in targets) or any(
            a.rows.stop != b.rows.start for a, b in itertools.pairwise(targets)
        ):
            raise CheckpointError(f"{original}: its parts {parts} are not consecutive rows of one layer of the model")
        table[original] = Target(first.layer, slice(first.rows.start, last.rows.stop))
    return {**table, **{KOHYA_PREFIX + name.replace(".", "_"): t for name, t in table.items()}}


def resolve(weights: LoraWeights, model: PretrainedModel, num_double: int, num_single: int) -> list[ResolvedPair]:
    """Every pair of ``weights`` on its layer and rows; ``CheckpointError`` for a name or shape that does not fit."""
    table = layer_table(model, num_double, num_single)
    resolved = []
    for pair in weights.pairs:
        target = table.get(pair.layer)
        if target is None:
            raise CheckpointError(
                f"{weights.source}: key {pair.key!r} names no layer of {type(model).__name__} (layer {pair.layer!r}; "
                f"a {weights.format} LoRA for another model, or a layer this model lacks)"
            )
        layer = model.get_submodule(target.layer)
        assert isinstance(layer, nn.Linear)
        rows = target.rows.stop - target.rows.start
        if pair.down.shape[1] != layer.in_features or pair.up.shape[0] != rows:
            raise CheckpointError(
                f"{weights.source}: key {pair.key!r}: expected down [r, {layer.in_features}] and up [{rows}, r] "
                f"for layer {pair.layer!r}, got down {list(pair.down.shape)} and up {list(pair.up.shape)}"
            )
        resolved.append(ResolvedPair(target.layer, target.rows, pair.down, pair.up, pair.scale))
    return resolved
