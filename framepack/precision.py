"""The default dtype per device (``default_dtype``, the one dtype policy) and the generic pieces of float16 inference.

GPUs without bfloat16 (RTX 20xx, GTX 16xx) must run in float16, whose range ends at
65504. HunyuanVideo-style residual streams grow past that, so float16 compute keeps the
residual stream in float32 and adds each block's (float16) update to it in float32
(``add_residual``); norms, modulation and the output head stay float32 as well.
``check_finite`` turns a silent overflow into an error naming where it happened;
``FiniteGuard`` does the same for a whole model call with a single read of the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .device_runtime import runtime
from .errors import NumericalError


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype policy: what a model on ``device`` computes in when no dtype is given.

    float32 on CPU (bfloat16 matmuls there are ~100x slower); bfloat16 on GPUs that compute
    it natively (the runtime's ``supports_bf16``: emulated bf16 on sm < 80 does not count);
    float16 on other GPUs (RTX 20xx, GTX 16xx), where the transformer keeps float32 islands.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if runtime().supports_bf16(device) else torch.float16


def check_finite(tensor: torch.Tensor, where: str) -> torch.Tensor:
    """Return ``tensor`` unchanged, or raise ``NumericalError`` naming ``where`` if it holds inf/NaN.

    Reading the verdict synchronises the device: call it where a float16 run needs
    guarding or while debugging, not in every block of a call (``FiniteGuard`` is for that).
    """
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return tensor
    nan = int(torch.isnan(tensor).sum())
    inf = int(finite.numel() - finite.sum()) - nan
    largest = tensor[finite].abs().max().item() if bool(finite.any()) else float("nan")
    raise _nonfinite_error(where, inf, nan, tensor.dtype, tensor.shape, f" (largest finite magnitude {largest:.4g})")


class FiniteGuard:
    """Which of a call's named tensors first held inf/NaN, with one device read per call.

    ``record`` only queues the counts of a tensor's inf and NaN values on the device;
    ``raise_if_nonfinite`` reads every count at once (``read``, the call's one host sync)
    and raises ``NumericalError`` naming the first tensor recorded with any.
    """

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self._names = list(names)
        self._counts = torch.zeros(len(self._names), 2, dtype=torch.int64, device=device)  # (inf, NaN) per name
        self._recorded: dict[int, tuple[torch.dtype, torch.Size]] = {}  # for the message

    def record(self, position: int, tensor: torch.Tensor) -> None:
        """Count the inf and NaN values of ``tensor``, the one named ``names[position]``, without reading them."""
        self._counts[position, 0] = torch.isinf(tensor).sum()
        self._counts[position, 1] = torch.isnan(tensor).sum()
        self._recorded[position] = tensor.dtype, tensor.shape

    def read(self) -> list[list[int]]:
        """Every (inf, NaN) count, on the host."""
        return self._counts.cpu().tolist()  # one copy to the host, not one read per count

    def raise_if_nonfinite(self) -> None:
        for position, (inf, nan) in enumerate(self.read()):
            if inf or nan:
                raise _nonfinite_error(self._names[position], inf, nan, *self._recorded[position])


def _nonfinite_error(
    where: str, inf: int, nan: int, dtype: torch.dtype, shape: torch.Size, detail: str = ""
) -> NumericalError:
    return NumericalError(
        f"{where}: {inf} inf and {nan} NaN of {math.prod(shape)} values in a {dtype} tensor of shape {list(shape)}"
        + detail
        + (
            "; float16 overflows above 65504: keep this part's residual stream and norms in float32, "
            "or use bfloat16 on a GPU that supports it"
            if dtype == torch.float16
            else ""
        )
    )


def add_residual(stream: torch.Tensor, update: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """``stream + gate * update`` computed in the stream's dtype (float32 for float16 compute),
    so a float16 block output never meets the large residual values in float16."""
    update = update.to(stream.dtype)
    return stream + (update if gate is None else gate.to(stream.dtype) * update)
