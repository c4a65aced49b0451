"""Models built on the ``meta`` device for the cost model, without running their initialisers.

On ``meta`` an initialiser (``normal_``, ``uniform_``...) computes nothing, yet the first one
goes through torch's reference implementations, whose import alone pulls in ``torch._dynamo``
(seconds, more than building the real-size models): they are skipped, leaving shapes and
dtypes, all the cost model reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..models.configuration import ModelConfig

# In-place initialisers torch.nn's reset_parameters call (torch.nn.init and Tensor methods).
_INITIALISERS = frozenset({"normal_", "uniform_", "zero_", "fill_", "trunc_normal_", "kaiming_uniform_", "copy_"})


class _SkipInitialisers(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _INITIALISERS:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device, initialisers skipped, in eval mode without gradients."""
    with torch.device("meta"), _SkipInitialisers():
        module = build()
    return module.eval().requires_grad_(False)


@functools.lru_cache(maxsize=16)
def meta_model(model: type[nn.Module], config: ModelConfig, dtype: torch.dtype) -> nn.Module:
    """One meta instance per (class, config, dtype): the traces and the memory plan share it."""
    return build_on_meta(lambda: model(config).to(dtype))
