"""A denoising call stays on the model's device: no tensor made elsewhere, none mixed in.

CUDA refuses some ops that mix in a CPU tensor (0-dim included), so on the CPU a stray
``torch.tensor(...)`` goes unnoticed. Here the model runs on the meta device under a
dispatch mode that fails on any op reading or making a tensor on another device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from framepack.models.transformer import FramePackTransformer, TransformerConfig
from framepack.precision import FiniteGuard
from tests.transformer_support import conditioning_and_context, make_inputs, randomise_


class OneDevice(TorchDispatchMode):
    """Raises on the first op whose inputs or outputs are not all on ``device``."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.ops = 0

    def _check(self, func: Any, what: str, values: Any) -> None:
        devices = {t.device for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor)}
        if devices - {self.device}:
            raise AssertionError(f"{func}: {what} on {sorted(map(str, devices))}, expected only {self.device}")

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        self._check(func, "inputs", (args, kwargs))
        out = func(*args, **kwargs)
        self._check(func, "outputs", out)
        self.ops += 1
        return out


def on_meta(prepared: Any) -> Any:
    moved = {
        f.name: getattr(prepared, f.name).to("meta")
        for f in dataclasses.fields(prepared)
        if isinstance(getattr(prepared, f.name), torch.Tensor)
    }
    return dataclasses.replace(prepared, **moved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lengths", [[5], [9, 3]])  # uneven text lengths add the attention masks
def test_denoise_makes_and_mixes_no_tensor_off_the_device(
    dtype: torch.dtype, lengths: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = FramePackTransformer(TransformerConfig.preset("tiny")).eval().requires_grad_(False)
    randomise_(model, 1)
    model.to(dtype)
    model.proj_out.float()  # as from_pretrained keeps it (fp32_output_head)
    monkeypatch.setattr(FiniteGuard, "read", lambda guard: [])  # float16's one read: meta holds no values
    inputs = make_inputs(len(lengths), lengths, seed=4)
    cond, context = conditioning_and_context(inputs)
    prepared = on_meta(model.prepare(cond, context, inputs["latents"].shape))  # prepare reads text lengths
    model.to("meta")
    latents, timestep = inputs["latents"].to("meta", dtype), inputs["timestep"].to("meta", dtype)
    with OneDevice("meta") as mode:
        out = model.denoise(latents, timestep, prepared)
    assert out.device.type == "meta" and out.shape == inputs["latents"].shape and mode.ops > 100
