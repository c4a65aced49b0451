"""Hand-made stand-ins for the transformer, for the sampler and section-loop tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from framepack.conditioning import Conditioning, PackedContext


@dataclass
class Prepared:
    section: int
    conditioning: Conditioning
    context: PackedContext | None
    latents_shape: tuple[int, ...]
    branch: str = "positive"


@dataclass
class Call:
    latents: torch.Tensor
    timestep: torch.Tensor
    prepared: Prepared
    branch: str
    cache: Any


def constant_x0_velocity(
    latents: torch.Tensor, timestep: torch.Tensor, prepared: Prepared, branch: str
) -> torch.Tensor:
    """The velocity whose x0 is the constant ``section + 1``: v = (x − c) / sigma."""
    sigma = (timestep.float() / 1000).view(-1, 1, 1, 1, 1)
    return (latents.float() - (prepared.section + 1)) / sigma


class FakeTransformer(torch.nn.Module):
    """Records every prepare/denoise call; the velocity comes from ``velocity(latents, timestep, prepared, branch)``."""

    def __init__(
        self,
        velocity: Callable[[torch.Tensor, torch.Tensor, Prepared, str], torch.Tensor] = constant_x0_velocity,
        dtype: torch.dtype = torch.float32,
        fail_in_section: int | None = None,
    ) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros((), dtype=dtype))
        self.velocity = velocity
        self.fail_in_section = fail_in_section
        self.prepared: list[Prepared] = []
        self.calls: list[Call] = []

    def prepare(
        self, conditioning: Conditioning, context: PackedContext | None, latents_shape: tuple[int, ...]
    ) -> Prepared:
        # the negative branch is prepared after the positive one, with the same context object
        branch = "positive"
        if self.prepared and self.prepared[-1].context is context:
            section, branch = self.prepared[-1].section, "negative"
        else:
            section = self.prepared[-1].section + 1 if self.prepared else 0
        prepared = Prepared(section, conditioning, context, tuple(latents_shape), branch)
        self.prepared.append(prepared)
        return prepared

    def denoise(
        self, latents: torch.Tensor, timestep: torch.Tensor, prepared: Prepared, *, cache: Any = None
    ) -> torch.Tensor:
        if prepared.section == self.fail_in_section:
            raise RuntimeError("fake transformer failure")
        self.calls.append(Call(latents.clone(), timestep.clone(), prepared, prepared.branch, cache))
        return self.velocity(latents, timestep, prepared, prepared.branch).float()


def conditioning(batch: int = 1, guidance: float = 10.0, image: float | None = 1.0, text: float = 1.0) -> Conditioning:
    return Conditioning(
        text_embeds=torch.full((batch, 4, 8), text),
        text_mask=torch.tensor([[True, True, True, False]] * batch),
        pooled=torch.full((batch, 6), text),
        guidance=torch.full((batch,), guidance),
        image_embeds=None if image is None else torch.full((batch, 3, 5), image),
    )
