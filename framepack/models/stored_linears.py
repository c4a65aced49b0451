"""Compute in float32 on a CPU from a bf16 or fp8 checkpoint without a float32 copy of it.

A CPU multiplies float32 matrices about a hundred times faster than bfloat16 ones, but a
float32 copy of the 13B transformer is 52 GB. ``compute_in(model, torch.float32)`` after
``from_pretrained(..., dtype=torch.bfloat16, storage="mmap")`` casts everything except
the Linear weights (norms, biases, convolutions: a few percent of the bytes) and leaves
each Linear weight as stored, memory-mapped where it was: ``framepack.models.linear.Linear``
computes in its bias's dtype and upcasts its weight (times its scale) per layer at use,
so only one layer's float32 weight exists at a time, and streaming moves the stored bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from .linear import Linear


def compute_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast every floating tensor of ``model`` to ``dtype``, except the weights and weight
    scales of its ``Linear`` layers with a bias (a layer computes in its bias's dtype);
    returns the bytes of the new tensors. Tensors shared between modules stay shared."""
    kept: set[int] = set()
    for module in model.modules():
        if isinstance(module, Linear) and module.bias is not None:
            kept.update(id(t) for t in (module.weight, module.weight_scale) if t is not None)
    cast: dict[int, torch.Tensor] = {}
    allocated = 0
    for module in model.modules():
        for table, is_parameter in ((module._parameters, True), (module._buffers, False)):
            for name, tensor in table.items():
                if tensor is None or id(tensor) in kept or not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                if id(tensor) not in cast:
                    new = tensor.detach().to(dtype)
                    allocated += new.nbytes
                    cast[id(tensor)] = nn.Parameter(new, requires_grad=False) if is_parameter else new
                table[name] = cast[id(tensor)]
    return allocated
