"""Linear: the transformer's one linear layer, for the weights people actually have.

It is ``nn.Linear`` with two additions, both off by default (then it computes exactly as
``nn.Linear``):

* **Narrow storage.** A layer computes in its bias's dtype; its weight may be stored in a
  narrower one (``torch.float8_e4m3fn``, or bfloat16 under a float32 bias on a CPU) and is
  upcast at use, times ``weight_scale`` when the checkpoint has scales: one per tensor
  ``[1]``, per output channel ``[out, 1]`` or per block of input columns ``[out, in / block, 1]``.
  Streaming therefore moves the narrow bytes, and the upcast happens on the device.
* **Run-time LoRA pairs** (``lora``, a ``LoraPairs``): ``y = x W^T + b + sum_i s_i (x A_i^T) B_i^T``
  over the pairs, each on a range of output rows (a pair may cover one part of a fused
  weight: q of a fused qkv). The pairs are buffers, so they travel with a streamed block;
  each up matrix holds its pair's alpha / rank. The strengths live in one ``LoraStrengths``
  shared by every layer of a model (and by a streamer's copies of its blocks), each also as
  a 0-dim tensor that a strength change overwrites in place: a compiled block reads it as
  an input, so neither a strength nor a LoRA's alpha / rank is a constant of its graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import dequantize


class LoraStrengths(dict[str, float]):
    """Adapter name -> strength, one per model. Copies of a block (a streamer's shells) share it.

    Each strength is also a float32 0-dim tensor (``tensor``) on ``device``, where the layers
    compute: setting a strength overwrites it in place (one scalar write), so the layers, and
    the compiled graphs that read it, follow without any other tensor changing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.device = torch.device("cpu")
        self._tensors: dict[str, torch.Tensor] = {}
        for adapter, strength in dict(*args, **kwargs).items():
            self[adapter] = strength

    def __deepcopy__(self, memo: dict[int, Any]) -> LoraStrengths:
        return self

    def __setitem__(self, adapter: str, strength: float) -> None:
        super().__setitem__(adapter, strength)
        if adapter in self._tensors:
            self._tensors[adapter].fill_(strength)
        else:
            self._tensors[adapter] = torch.tensor(strength, dtype=torch.float32, device=self.device)

    def __delitem__(self, adapter: str) -> None:
        super().__delitem__(adapter)
        del self._tensors[adapter]

    def pop(self, adapter: str) -> float:  # type: ignore[override]
        strength = self[adapter]
        del self[adapter]
        return strength

    def tensor(self, adapter: str) -> torch.Tensor:
        """``adapter``'s strength as a float32 0-dim tensor on ``device``."""
        return self._tensors[adapter]

    def place(self, device: torch.device) -> None:
        """Keep the strength tensors on ``device`` (a no-op when they are there)."""
        device = torch.device(device)
        if device != self.device:
            self.device = device
            self._tensors = {adapter: t.to(device) for adapter, t in self._tensors.items()}


@dataclasses.dataclass(frozen=True)
class PairPlacement:
    """Where pair ``i`` of a ``LoraPairs`` acts: its adapter, output rows and alpha / rank."""

    adapter: str
    rows: slice
    scale: float


class LoraPairs(nn.Module):
    """The run-time LoRA pairs of one ``Linear``: buffers ``down`` [sum of ranks, in], every pair's
    down matrix stacked in pair order, and ``up_i`` [rows, r] times the pair's scale (alpha / rank).

    The pairs all read the layer's input, so their downs are stacked once, when a pair is
    added: a call makes one down-projection matmul for all of them, then each pair's up
    projection is accumulated straight into its rows of the output (``addmm_``, no temporary).
    """

    def __init__(self, strengths: LoraStrengths) -> None:
        super().__init__()
        self.strengths = strengths
        self.placements: list[PairPlacement] = []
        self.register_buffer("down", None, persistent=False)

    def __len__(self) -> int:
        return len(self.placements)

    def pairs(self) -> Iterator[tuple[PairPlacement, torch.Tensor, torch.Tensor]]:
        start = 0
        for i, placement in enumerate(self.placements):
            up = self._buffers[f"up_{i}"]
            yield placement, self._buffers["down"][start : start + up.shape[1]], up
            start += up.shape[1]

    def append(self, placement: PairPlacement, down: torch.Tensor, up: torch.Tensor) -> None:
        """Add a pair; ``up`` is scaled by ``placement.scale`` here (in float32), once."""
        self._set([*self.pairs(), (placement, down, (up.float() * placement.scale).to(up.dtype))])

    def remove(self, adapter: str) -> None:
        """Drop every pair of ``adapter``; the others keep their order."""
        self._set([(p, down, up) for p, down, up in self.pairs() if p.adapter != adapter])

    def _set(self, pairs: list[tuple[PairPlacement, torch.Tensor, torch.Tensor]]) -> None:
        # Not persistent: the pairs are no part of the model's checkpoint (state_dict), yet, as
        # buffers, they move with the layer (``to``, a streamer's slots).
        self._buffers.clear()
        self._non_persistent_buffers_set.clear()
        self.register_buffer("down", torch.cat([down for _, down, _ in pairs]) if pairs else None, persistent=False)
        for i, (_, _, up) in enumerate(pairs):
            self.register_buffer(f"up_{i}", up, persistent=False)
        self.placements = [p for p, _, _ in pairs]

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """out[..., rows] += strength * (x A^T) (scale B)^T for every pair, in place (``out`` contiguous).

        The strength is a tensor (``LoraStrengths.tensor``), not a Python float given to
        ``addmm_``: it scales the pair's r columns of the down projection instead."""
        down = self._buffers["down"]
        projected = F.linear(x, down).view(-1, down.shape[0])  # x A_i^T of every pair, side by side
        rows_of = out.view(-1, out.shape[-1])
        start = 0
        for i, placement in enumerate(self.placements):
            up = self._buffers[f"up_{i}"]
            strength = self.strengths.tensor(placement.adapter)
            rows_of[:, placement.rows].addmm_(projected[:, start : start + up.shape[1]] * strength, up.t())
            start += up.shape[1]

    def delta(self, adapter: str | None = None) -> list[tuple[slice, torch.Tensor]]:
        """Each pair's weight update (strength * scale * B A) with its rows, in float32."""
        return [
            (p.rows, self.strengths[p.adapter] * (up.float() @ down.float()))  # up holds the scale
            for p, down, up in self.pairs()
            if adapter is None or p.adapter == adapter
        ]


class Linear(nn.Linear):
    """``nn.Linear`` with a narrow-storage weight and run-time LoRA pairs (module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self.register_buffer("weight_scale", None)
        self.lora: LoraPairs | None = None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the layer computes in: its bias's (the weight may be stored narrower)."""
        return self.weight.dtype if self.bias is None else self.bias.dtype

    def dense_weight(self) -> torch.Tensor:
        """The weight in the compute dtype: upcast and scaled where it is stored narrower."""
        weight, dtype = self.weight, self.compute_dtype
        if weight.dtype == dtype:
            return weight
        return dequantize(weight, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.dense_weight(), self.bias)
        if self.lora:
            self.lora.add_to(out, x)
        return out

    def forward_into(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """out[...] = self(x), written straight into ``out`` (a slice of a joint buffer) when it is
        contiguous; ``x`` is cast to the compute dtype (a float32 stream meets float16 weights)."""
        x = x.to(self.compute_dtype)
        if out.is_contiguous() and x.is_contiguous():
            torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.dense_weight().t(), out=out.view(-1, out.shape[-1]))
            if self.lora:
                self.lora.add_to(out, x)
        else:
            out.copy_(self(x))
