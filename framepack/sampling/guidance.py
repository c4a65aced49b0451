"""Velocity -> x0 wrapper around the transformer: real CFG, CFG rescale, the reference's dtype rounding.

Distilled guidance is not applied here: it is an input of the transformer
(``Conditioning.guidance``), already part of the prepared inputs.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..cache.base import NEGATIVE, POSITIVE, CachePolicy, PolicyBranch
from ..errors import ConfigError


class Denoising(Protocol):
    """What the guidance wrapper needs from a transformer."""

    def parameters(self) -> Any: ...

    def denoise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prepared: Any,
        *,
        cache: CachePolicy | PolicyBranch | None = None,
    ) -> torch.Tensor: ...


class BranchSplit(Protocol):
    """CFG parallelism: this process computes one branch, another process the other
    (framepack.distributed.CfgParallel)."""

    branch: str  # POSITIVE or NEGATIVE: the branch this process computes

    def exchange(self, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's branch velocity in, (positive, negative) velocities out, on every process."""


def combine_guidance(
    positive: torch.Tensor, negative: torch.Tensor | None, real_cfg: float, cfg_rescale: float
) -> torch.Tensor:
    """``neg + cfg·(pos − neg)`` (neg = 0 when None), then rescaled toward the positive's std by ``cfg_rescale``."""
    guided = positive if negative is None else negative + real_cfg * (positive - negative)
    if cfg_rescale == 0:
        return guided
    dims = list(range(1, guided.ndim))
    # torch's default (Bessel-corrected) std, as the reference.
    ratio = positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return cfg_rescale * (guided * ratio) + (1.0 - cfg_rescale) * guided


class GuidedDenoiser:
    """``denoise(x, sigma) -> x0`` for the sampler, from a transformer and its prepared inputs.

    On a low-precision model the latents and ``1000·sigma`` are rounded to the model dtype
    before the call, and x0 is computed from the rounded latents, exactly as the reference;
    on a float32 model nothing is rounded. The negative pass runs only when ``real_cfg != 1``.

    With a cache policy, the positive pass runs with the policy and the negative pass with its
    negative branch (``policy.branch(NEGATIVE)``), so each branch keeps its own residuals and
    decision state. Settings are taken as validated (``SamplingSettings``).

    With ``branches`` (CFG parallelism) and real CFG, this process runs only its own branch
    and receives the other's velocity; both are then combined exactly as here.
    """

    def __init__(
        self,
        transformer: Denoising,
        positive: Any,
        negative: Any = None,
        *,
        real_cfg: float = 1.0,
        cfg_rescale: float = 0.0,
        cache: CachePolicy | None = None,
        branches: BranchSplit | None = None,
    ) -> None:
        if real_cfg != 1.0 and negative is None:
            raise ConfigError(f"real_cfg is {real_cfg}: real CFG needs prepared negative inputs, got None")
        self.transformer = transformer
        self.positive = positive
        self.negative = negative
        self.real_cfg = real_cfg
        self.cfg_rescale = cfg_rescale
        self.cache = cache
        self.negative_cache = None if cache is None else cache.branch(NEGATIVE)
        self.model_dtype = next(iter(transformer.parameters())).dtype
        self.branches = branches

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        batch = x.shape[0]
        sigmas = torch.full((batch,), sigma, dtype=torch.float32, device=x.device)
        model_x = x.to(self.model_dtype)
        timestep = (sigmas * 1000.0).to(self.model_dtype)
        call = self.transformer.denoise
        if self.real_cfg != 1.0 and self.branches is not None:
            if self.branches.branch == POSITIVE:
                mine = call(model_x, timestep, self.positive, cache=self.cache)
            else:
                mine = call(model_x, timestep, self.negative, cache=self.negative_cache)
            v_pos, v_neg = self.branches.exchange(mine.float())
        else:
            v_pos = call(model_x, timestep, self.positive, cache=self.cache).float()
            v_neg = None
            if self.real_cfg != 1.0:
                v_neg = call(model_x, timestep, self.negative, cache=self.negative_cache).float()
        velocity = combine_guidance(v_pos, v_neg, self.real_cfg, self.cfg_rescale)
        # x0 from the latents the model saw (rounded on low-precision models), as the reference.
        return torch.add(model_x.float(), velocity, alpha=-sigma).to(x.dtype)
