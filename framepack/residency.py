"""Where a module's weights live, and moving whole components between host and device.

A pipeline uses each large component in one phase only (text encoders to encode the
prompt, the VAE to encode and decode, the transformer to sample). ``ComponentResidency``
puts a component on the device for its phase and back afterwards *without copying it to
the host*: it remembers the host tensors the component was loaded with and points the
module back at them. With ``from_pretrained(..., storage="mmap")`` those host tensors are
views of the checkpoint file, so an offloaded component costs only page cache, which
the OS can reclaim, instead of anonymous RAM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TensorPlace:
    """One (module, attribute) holding a tensor, and that tensor's index among the unique tensors."""

    module: nn.Module
    attr: str
    is_parameter: bool
    tensor: int


class ModuleTensors:
    """A module's parameters and buffers, deduplicated (tied weights stay tied), skipping the
    subtrees in ``exclude`` (e.g. blocks another mechanism manages)."""

    def __init__(self, module: nn.Module, exclude: Iterable[nn.Module] = ()) -> None:
        skipped = {id(m) for root in exclude for m in root.modules()}
        self.places: list[TensorPlace] = []
        self.tensors: list[torch.Tensor] = []
        index: dict[int, int] = {}
        for sub in module.modules():
            if id(sub) in skipped:
                continue
            for is_parameter, table in ((True, sub._parameters), (False, sub._buffers)):
                for attr, tensor in table.items():
                    if tensor is None:
                        continue
                    if id(tensor) not in index:
                        index[id(tensor)] = len(self.tensors)
                        self.tensors.append(tensor)
                    self.places.append(TensorPlace(sub, attr, is_parameter, index[id(tensor)]))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def assign(self, tensors: Sequence[torch.Tensor]) -> None:
        """Point the module at ``tensors`` (same order as ``self.tensors``), as assign-loading does.
        Each tensor is wrapped once, so tied weights stay one parameter."""
        kinds = {place.tensor: place.is_parameter for place in self.places}
        self.tensors = [
            nn.Parameter(t, requires_grad=False) if kinds[j] else t for j, t in enumerate(tensors)
        ]
        for place in self.places:
            table = place.module._parameters if place.is_parameter else place.module._buffers
            table[place.attr] = self.tensors[place.tensor]


class ComponentResidency:
    """Moves one component to ``device`` for a phase and back to its own host tensors.

    ``exclude`` leaves submodules alone (a transformer's streamed blocks, which a
    ``LayerStreamer`` manages). Inference only: weights are re-wrapped without gradients.
    """

    def __init__(self, module: nn.Module, device: torch.device | str, *, exclude: Iterable[nn.Module] = ()) -> None:
        self.module = module
        self.device = torch.device(device)
        self._tensors = ModuleTensors(module, exclude)
        self._host = list(self._tensors.tensors)
        self.on_device = False

    @property
    def nbytes(self) -> int:
        """Bytes this component occupies on the device while there."""
        return self._tensors.nbytes

    def to_device(self) -> nn.Module:
        """Copy the weights to the device (the host tensors are kept, untouched)."""
        if not self.on_device:
            self._tensors.assign([t.to(self.device) for t in self._host])
            self.on_device = True
        return self.module

    def offload(self) -> None:
        """Drop the device copies: the module points at its original host tensors again."""
        if self.on_device:
            self._tensors.assign(self._host)
            self.on_device = False
