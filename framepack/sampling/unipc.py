"""Flow-matching UniPC (the reference's "Better Flow Matching UniPC"), variants bh1 and bh2.

The model is any callable ``denoise(x, sigma) -> x0`` (sigma a Python float) returning a
data (x0) prediction.
Step i moves x from sigma[i-1] to sigma[i] with a UniP predictor, evaluates the model there
once and applies the UniC corrector with that evaluation, so N steps cost N model calls.
The order ramps up 1, 2, 3 over the first steps (capped at min(3, N - 1)). The result is the
last x0 prediction (made at sigma[N-1]); sigma[N] (0) only sets N and is never evaluated.

Coefficients are computed in double precision from the float32 sigmas; the latents are
updated in their own dtype (float32 in the reference, float64 accepted for analysis), each
update as one linear combination, so float32 results differ from the reference's operation
order by rounding only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
VARIANTS = ("bh1", "bh2")


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees after step ``step`` (0-based) of ``num_steps``.

    x        the sampler's state after this step (the corrected point; the noise at step 0)
    denoised the model's x0 prediction made at ``sigma`` on this step
    """

    step: int
    num_steps: int
    sigma: float
    x: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[StepInfo], None]


def sample_unipc(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    *,
    variant: str = "bh1",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from noise ``x`` at sigmas[0] and return the final x0 prediction (same dtype as x).

    ``callback`` is called after every step and may raise (e.g. GenerationCancelled) to stop.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"sample_unipc: variant must be one of {VARIANTS}, got {variant!r}")
    if x.dtype not in (torch.float32, torch.float64):
        raise InputError(f"sample_unipc: latents must be float32 (or float64), got {x.dtype}")
    sigma_values = _check_sigmas(sigmas)
    num_steps = len(sigma_values) - 1
    max_order = min(3, num_steps - 1)

    predictions: list[torch.Tensor] = []
    history_sigmas: list[float] = []
    for i in range(num_steps):
        sigma = sigma_values[i]
        if i == 0:
            prediction = denoise(x, sigma)
        else:
            order = min(i, max_order)
            x, prediction = _step(denoise, x, predictions, history_sigmas, sigma, order, variant)
        predictions.append(prediction)
        history_sigmas.append(sigma)
        if max_order > 0:  # the update never looks further back than max_order evaluations
            del predictions[:-max_order], history_sigmas[:-max_order]
        if callback is not None:
            callback(StepInfo(i, num_steps, sigma, x, prediction))
    return predictions[-1]


def _check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    values = [float(s) for s in (sigmas.detach().cpu().flatten() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(values) < 2:
        raise ConfigError(f"sample_unipc: expected at least 2 sigmas (steps + 1), got {len(values)}")
    evaluated = values[:-1]
    if not all(math.isfinite(s) and s > 0 for s in evaluated):
        raise ConfigError(f"sample_unipc: every sigma but the last must be finite and > 0, got {evaluated}")
    if any(b >= a for a, b in zip(evaluated, evaluated[1:])):
        raise ConfigError(f"sample_unipc: sigmas must be strictly decreasing, got {evaluated}")
    return values


def _step(
    denoise: Denoiser,
    x: torch.Tensor,
    predictions: list[torch.Tensor],
    sigmas: list[float],
    sigma: float,
    order: int,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One UniP predictor + model call + UniC corrector step of ``order`` from sigmas[-1] to ``sigma``.

    With s = sigmas[-1], m0 = predictions[-1], h = ln(s / sigma), r_j the older steps' log-sigma
    offsets over h and D_j = (M_j − m0) / r_j:
        x̃      = (sigma / s)·x − expm1(−h)·m0
        x_pred = x̃ − B·Σ ρp_j·D_j
        x_new  = x̃ − B·(Σ ρc_j·D_j + ρc_k·(denoise(x_pred) − m0))
    Both are evaluated as one linear combination of x, m0, the older M_j (and the new
    prediction): the same sums with fewer passes over the latents.
    """
    prev_sigma, prev_prediction = sigmas[-1], predictions[-1]
    lambda_prev = -math.log(prev_sigma)
    h = -math.log(sigma) - lambda_prev
    ratios = [(-math.log(sigmas[-(j + 1)]) - lambda_prev) / h for j in range(1, order)]
    older = [predictions[-(j + 1)] for j in range(1, order)]

    z = -h
    phi = math.expm1(z)
    b_h = z if variant == "bh1" else math.expm1(z)
    rows = np.vander(np.array(ratios + [1.0]), order, increasing=True).T  # row n = ratios ** n
    rhs, g, factorial = [], phi / z - 1, 1
    for n in range(1, order + 1):
        rhs.append(g * factorial / b_h)
        factorial *= n + 1
        g = g / z - 1 / factorial
    predictor = [] if order == 1 else [0.5] if order == 2 else [float(v) for v in np.linalg.solve(rows[:-1, :-1], rhs[:-1])]
    corrector = [0.5] if order == 1 else [float(v) for v in np.linalg.solve(rows, rhs)]

    # B·ρ_j·D_j = (B·ρ_j / r_j)·(M_j − m0): weight on M_j, and its negative on m0.
    pred_weights = [b_h * rho / r for rho, r in zip(predictor, ratios)]
    x_pred = _combine(x, sigma / prev_sigma, [(prev_prediction, -phi + sum(pred_weights))] + [
        (m, -w) for m, w in zip(older, pred_weights)
    ])
    prediction = denoise(x_pred, sigma)

    corr_weights = [b_h * rho / r for rho, r in zip(corrector, ratios)]
    new_weight = b_h * corrector[-1]
    x_new = _combine(x, sigma / prev_sigma, [(prev_prediction, -phi + sum(corr_weights) + new_weight)] + [
        (m, -w) for m, w in zip(older, corr_weights)
    ] + [(prediction, -new_weight)])
    return x_new, prediction


def _combine(first: torch.Tensor, weight: float, terms: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """weight·first + Σ w·t, accumulated in place in one new tensor."""
    out = first * weight
    for tensor, w in terms:
        out.add_(tensor, alpha=w)
    return out
