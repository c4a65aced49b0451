"""Run-time LoRAs on a model whose layers are ``framepack.models.linear.Linear``.

``add_lora`` puts each pair of a LoRA on its layer as buffers (``Linear.lora``), converted
to the layer's compute dtype (never into a float8 weight); strengths live in one
``LoraStrengths`` shared by every layer, so ``set_lora_strength`` changes no block tensor
(only the strength's own 0-dim tensor, in place: compiled blocks do not compile again), and
streamed blocks (whose shells share it) follow it too. Adding or removing pairs changes
the blocks' tensors, so a streaming set-up is made again around it (``streaming_paused``).
``fuse_loras`` merges the pairs into the weights for speed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..lora import LoraWeights, load_lora
from ..lora.resolve import resolve
from .linear import Linear, LoraPairs, LoraStrengths, PairPlacement
from .streaming import StreamableModel

LoraSource = str | os.PathLike[str] | Mapping[str, torch.Tensor] | LoraWeights


@dataclasses.dataclass(frozen=True)
class LoadedLora:
    """A LoRA on the model: its name, where it came from, its content's digest and strength."""

    name: str
    source: str
    digest: str
    format: str
    strength: float
    fused: bool  # merged into the weights by ``fuse_loras``: its strength is fixed


class LoraMethods(StreamableModel):
    """Mixin: LoRA methods for a model with ``Linear`` layers, ``checkpoint_keys`` and a block config."""

    def _lora_block_counts(self) -> tuple[int, int]:
        """(double blocks, single blocks): the original HunyuanVideo names a LoRA may use."""
        raise NotImplementedError

    @property
    def lora_strengths(self) -> LoraStrengths:
        if "_lora_strengths" not in self.__dict__:
            self.__dict__["_lora_strengths"] = LoraStrengths()
            self.__dict__["_loras"] = {}
        return self.__dict__["_lora_strengths"]

    @property
    def _lora_table(self) -> dict[str, LoadedLora]:
        self.lora_strengths  # noqa: B018 (creates both on first use)
        return self.__dict__["_loras"]

    def loras(self) -> list[LoadedLora]:
        """The LoRAs on the model, in the order they were added."""
        return [
            entry if entry.fused else dataclasses.replace(entry, strength=self.lora_strengths[entry.name])
            for entry in self._lora_table.values()
        ]

    def add_lora(self, source: LoraSource, strength: float = 1.0, name: str | None = None) -> str:
        """Apply a LoRA (file, state dict or ``load_lora`` result) at run time; returns its name.

        LoRAs stack. ``name`` defaults to the file's stem (numbered if taken). Every pair is
        checked before any is placed: a file that does not fit leaves the model unchanged.
        """
        weights = source if isinstance(source, LoraWeights) else load_lora(source)
        strength = _strength(strength)
        name = self._new_lora_name(name, weights)
        pairs = resolve(weights, self, *self._lora_block_counts())
        self.lora_strengths[name] = strength
        try:
            with self.streaming_paused(undo=lambda: self._take_off(name)):
                for pair in pairs:
                    layer = self.get_submodule(pair.layer)
                    if layer.lora is None:
                        layer.lora = LoraPairs(self.lora_strengths)
                    # Copies: the model must not share tensors with the caller's state dict.
                    device, dtype = layer.weight.device, layer.compute_dtype
                    layer.lora.append(
                        PairPlacement(name, pair.rows, pair.scale),
                        pair.down.to(device=device, dtype=dtype, copy=True),
                        pair.up.to(device=device, dtype=dtype, copy=True),
                    )
        except BaseException:
            del self.lora_strengths[name]
            raise
        self._lora_table[name] = LoadedLora(name, weights.source, weights.digest, weights.format, strength, False)
        return name

    def set_lora_strength(self, name: str, strength: float) -> None:
        """Change a run-time LoRA's strength (0 turns it off); no block tensor changes or moves."""
        if self._require_lora(name).fused:
            raise ConfigError(f"LoRA {name!r} is fused into the weights: its strength can no longer change")
        self.lora_strengths[name] = _strength(strength)

    def remove_lora(self, name: str) -> None:
        """Take a run-time LoRA off: the outputs are again exactly those without it."""
        if self._require_lora(name).fused:
            raise ConfigError(f"LoRA {name!r} is fused into the weights: load the model again to remove it")
        with self.streaming_paused():
            self._take_off(name)
        del self.lora_strengths[name], self._lora_table[name]

    def fuse_loras(self) -> None:
        """Merge every run-time LoRA into the weights (at its strength now): no cost per step after.

        Merged in float32, then cast to the weight's storage dtype. A float8 weight is refused.
        """
        layers = list(self._lora_layers())
        narrow = [layer for layer in layers if layer.weight.element_size() == 1 or layer.weight_scale is not None]
        if narrow:
            name = next(n for n, m in self.named_modules() if m is narrow[0])
            raise ConfigError(
                f"fuse_loras: layer {name!r} stores its weight in {narrow[0].weight.dtype}: rounding a small LoRA "
                "update into float8 e4m3 (3 mantissa bits) loses most of it. Keep the LoRAs at run time "
                "(add_lora without fuse_loras), or load the model in bfloat16/float32, add the LoRAs, fuse, then quantize."
            )
        with self.streaming_paused():
            for layer in layers:
                merged = layer.weight.detach().float().clone()
                for rows, delta in layer.lora.delta():
                    merged[rows] += delta.to(merged.device)
                layer.weight = nn.Parameter(merged.to(layer.weight.dtype), requires_grad=False)
                layer.lora = None
        for name, entry in self._lora_table.items():
            if not entry.fused:
                self._lora_table[name] = dataclasses.replace(entry, strength=self.lora_strengths.pop(name), fused=True)

    def _take_off(self, name: str) -> None:
        """Remove every pair of LoRA ``name`` (streaming already paused)."""
        for layer in list(self._lora_layers()):
            layer.lora.remove(name)
            if not layer.lora:
                layer.lora = None

    def _lora_layers(self) -> Iterator[Linear]:
        return (m for m in self.modules() if isinstance(m, Linear) and m.lora is not None)

    def _require_lora(self, name: str) -> LoadedLora:
        if name not in self._lora_table:
            raise ConfigError(f"no LoRA named {name!r} on the model; loaded: {list(self._lora_table) or 'none'}")
        return self._lora_table[name]

    def _new_lora_name(self, name: str | None, weights: LoraWeights) -> str:
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"LoRA name: expected a non-empty string, got {name!r}")
            if name in self._lora_table:
                raise ConfigError(f"a LoRA named {name!r} is already on the model; pass another name")
            return name
        stem = "lora" if weights.source == "<state dict>" else Path(weights.source).stem
        candidate, n = stem, 1
        while candidate in self._lora_table:
            n += 1
            candidate = f"{stem}_{n}"
        return candidate


def _strength(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"LoRA strength: expected a finite number, got {value!r}")
    return float(value)
