"""Flow-matching UniPC (the reference's "Better Flow Matching UniPC"), variants bh1 and bh2.

The model is any callable ``denoise(x, sigma) -> x0`` (sigma a Python float) returning a
data (x0) prediction.
Step i moves x from sigma[i-1] to sigma[i] with a UniP predictor, evaluates the model there
once and applies the UniC corrector with that evaluation, so N steps cost N model calls.
The order ramps up 1, 2, 3 over the first steps (capped at min(3, N - 1)). The result is the
last x0 prediction (made at sigma[N-1]); sigma[N] (0) only sets N and is never evaluated.

The step coefficients are built as the reference builds them: float32 tensors on the
latents' device, the same operations in the same order (``step_coefficients``). As the steps
shrink, that construction cancels catastrophically: on the default schedule at 50 steps the
worst step's corrector weights are off the exact ones by more than their own size. Exact
arithmetic would therefore follow another trajectory than the reference's; these weights
give the reference's. The latents are updated in their own dtype (float32 in the reference,
float64 accepted for analysis), each update as one linear combination, so float32 results
differ from the reference's operation order by rounding only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class StepCoefficients:
    """The float32 scalars of one UniPC step of order k, as Python floats.

    decay     sigma / s (s the previous sigma), the factor on x
    phi       expm1(-h), h = ln(s / sigma)
    b_h       the variant's B(h): -h (bh1) or expm1(-h) (bh2)
    ratios    r_1..r_{k-1}, the older steps' log-sigma offsets over h
    predictor ρp, k - 1 weights (none at order 1)
    corrector ρc, k weights (the last one on the new evaluation)
    """

    decay: float
    phi: float
    b_h: float
    ratios: list[float]
    predictor: list[float]
    corrector: list[float]


def sample_unipc(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    *,
    variant: str = "bh1",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from noise ``x`` at sigmas[0] and return the final x0 prediction (same dtype as x).

    ``sigmas`` are taken as float32, as the reference holds them; ``denoise`` sees those values.
    ``callback`` is called after every step and may raise (e.g. GenerationCancelled) to stop.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"sample_unipc: variant must be one of {VARIANTS}, got {variant!r}")
    if x.dtype not in (torch.float32, torch.float64):
        raise InputError(f"sample_unipc: latents must be float32 (or float64), got {x.dtype}")
    if x.ndim == 0:
        raise InputError("sample_unipc: latents need a batch dimension, got a 0-d tensor")
    sigma_values = _check_sigmas(sigmas)
    num_steps = len(sigma_values) - 1
    max_order = min(3, num_steps - 1)
    # Per-sample float32 sigma vectors, as the reference passes them to its update. They stay on
    # the host: the coefficients are read there, and reading them from a device would wait for it.
    sigma_vectors = torch.tensor(sigma_values, dtype=torch.float32, device="cpu")[:, None].expand(-1, x.shape[0])

    predictions: list[torch.Tensor] = []
    history: list[torch.Tensor] = []
    for i in range(num_steps):
        sigma = sigma_values[i]
        if i == 0:
            prediction = denoise(x, sigma)
        else:
            coefficients = step_coefficients(history, sigma_vectors[i], min(i, max_order), variant)
            x, prediction = _step(denoise, x, predictions, sigma, coefficients)
        predictions.append(prediction)
        history.append(sigma_vectors[i])
        if max_order > 0:  # the update never looks further back than max_order evaluations
            del predictions[:-max_order], history[:-max_order]
        if callback is not None:
            callback(StepInfo(i, num_steps, sigma, x, prediction))
    return predictions[-1]


def step_coefficients(history: list[torch.Tensor], t: torch.Tensor, order: int, variant: str) -> StepCoefficients:
    """The coefficients of a step of ``order`` to sigma ``t`` after the sigmas ``history`` (oldest first).

    ``t`` and the history entries are the reference's per-sample float32 sigma vectors (B,);
    batch element 0 sets the scalars. Every operation, its order and its dtype are the
    reference's, including the float32 recursion g_{n+1} = g_n / z - 1/(n+1)! whose rounding
    sets the order-2 and order-3 weights.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"step_coefficients: variant must be one of {VARIANTS}, got {variant!r}")
    if not 1 <= order <= len(history):
        raise ConfigError(f"step_coefficients: order must be in 1..{len(history)}, got {order}")
    lambda_prev = -torch.log(history[-1])
    h = -torch.log(t) - lambda_prev
    rks = [((-torch.log(history[-(j + 1)]) - lambda_prev) / h)[0] for j in range(1, order)]
    rks_vector = torch.stack([*rks, torch.ones((), dtype=torch.float32, device=t.device)])

    hh = -h[0]
    phi = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    g = phi / hh - 1
    rows, rhs, factorial = [], [], 1
    for n in range(1, order + 1):
        rows.append(torch.pow(rks_vector, n - 1))
        rhs.append(g * factorial / b_h)
        factorial *= n + 1
        g = g / hh - 1 / factorial
    r_matrix, b_vector = torch.stack(rows), torch.stack(rhs)

    half = torch.full((1,), 0.5, dtype=torch.float32, device=t.device)
    empty = half[:0]
    predictor = empty if order == 1 else half if order == 2 else torch.linalg.solve(r_matrix[:-1, :-1], b_vector[:-1])
    corrector = half if order == 1 else torch.linalg.solve(r_matrix, b_vector)
    decay = (t / history[-1])[0]

    # One transfer of every scalar the step needs (a single sync on an accelerator).
    values = torch.cat([torch.stack([decay, phi, b_h]), rks_vector[:-1], predictor, corrector]).tolist()
    return StepCoefficients(
        decay=values[0],
        phi=values[1],
        b_h=values[2],
        ratios=values[3 : 2 + order],
        predictor=values[2 + order : 1 + 2 * order],
        corrector=values[1 + 2 * order :],
    )


def _check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.detach().cpu().flatten().tolist()
    values = torch.tensor([float(s) for s in sigmas], dtype=torch.float32, device="cpu").tolist()  # float32 rounding
    if len(values) < 2:
        raise ConfigError(f"sample_unipc: expected at least 2 sigmas (steps + 1), got {len(values)}")
    evaluated = values[:-1]
    if not all(math.isfinite(s) and s > 0 for s in evaluated):
        raise ConfigError(f"sample_unipc: every sigma but the last must be finite and > 0 in float32, got {evaluated}")
    if any(b >= a for a, b in itertools.pairwise(evaluated)):
        raise ConfigError(f"sample_unipc: sigmas must be strictly decreasing in float32, got {evaluated}")
    return values


def _step(
    denoise: Denoiser, x: torch.Tensor, predictions: list[torch.Tensor], sigma: float, c: StepCoefficients
) -> tuple[torch.Tensor, torch.Tensor]:
    """One UniP predictor + model call + UniC corrector step to ``sigma`` with coefficients ``c``.

    With m0 = predictions[-1] and D_j = (M_j − m0) / r_j for the older predictions M_j:
        x̃      = decay·x − phi·m0
        x_pred = x̃ − B·Σ ρp_j·D_j
        x_new  = x̃ − B·(Σ ρc_j·D_j + ρc_k·(denoise(x_pred) − m0))
    Both are evaluated as one linear combination of x, m0, the older M_j (and the new
    prediction): the same sums with fewer passes over the latents.
    """
    prev_prediction = predictions[-1]
    older = [predictions[-(j + 1)] for j in range(1, len(c.corrector))]

    # B·ρ_j·D_j = (B·ρ_j / r_j)·(M_j − m0): weight on M_j, and its negative on m0.
    pred_weights = [c.b_h * rho / r for rho, r in zip(c.predictor, c.ratios)]
    x_pred = _combine(
        x, c.decay, [(prev_prediction, -c.phi + sum(pred_weights))] + [(m, -w) for m, w in zip(older, pred_weights)]
    )
    prediction = denoise(x_pred, sigma)

    corr_weights = [c.b_h * rho / r for rho, r in zip(c.corrector, c.ratios)]
    new_weight = c.b_h * c.corrector[-1]
    x_new = _combine(
        x,
        c.decay,
        [(prev_prediction, -c.phi + sum(corr_weights) + new_weight)]
        + [(m, -w) for m, w in zip(older, corr_weights)]
        + [(prediction, -new_weight)],
    )
    return x_new, prediction


def _combine(first: torch.Tensor, weight: float, terms: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """weight·first + Σ w·t, accumulated in place in one new tensor."""
    out = first * weight
    for tensor, w in terms:
        out.add_(tensor, alpha=w)
    return out
