from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from framepack.errors import ConfigError, GenerationCancelled, InputError
from framepack.sampling.schedule import flux_sigmas, sequence_length
from framepack.sampling.unipc import StepInfo, sample_unipc, step_coefficients

APP_SEQ = sequence_length(33, 640, 608)  # a 640 bucket: mu capped at ln 7, as every default run
TINY_SEQ = 144  # 64x64 px: mu = 0.481
STEP_COUNTS = [10, 25, 50, 100]
# Our update is one linear combination per point where the reference goes through D_j, x̃ and
# tensordot: the same coefficients, another order of float32 roundings. Over 10-100 steps of the
# wavy denoiser that leaves at most ~1.5e-6 of the result's largest value (measured over seeds).
LOOP_TOL = 2e-6

# rks (with the trailing 1), ρp (None at order 1), ρc, expm1(-h), B(h): float32 tensors.
Coefficients = tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor, torch.Tensor, torch.Tensor]


# --- independent transcription of the original app's sampler (FlowMatchUniPC), in float32 torch as it runs ---
def reference_coefficients(t_prev_list: list[torch.Tensor], t: torch.Tensor, order: int, variant: str) -> Coefficients:
    lambda_prev_0 = -torch.log(t_prev_list[-1])
    lambda_t = -torch.log(t)
    h = lambda_t - lambda_prev_0
    rks: list = []
    for i in range(1, order):
        lambda_prev_i = -torch.log(t_prev_list[-(i + 1)])
        rks.append(((lambda_prev_i - lambda_prev_0) / h)[0])
    rks.append(1.0)
    rks_t = torch.tensor(rks)
    hh = -h[0]
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    R, b = [], []
    for i in range(1, order + 1):
        R.append(torch.pow(rks_t, i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    R_t, b_t = torch.stack(R), torch.tensor(b)
    rhos_p = None if order == 1 else torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R_t[:-1, :-1], b_t[:-1])
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R_t, b_t)
    return rks_t, rhos_p, rhos_c, h_phi_1, b_h


def exact_coefficients(t_prev_list: list[torch.Tensor], t: torch.Tensor, order: int, variant: str) -> Coefficients:
    """The same quantities from the same float32 sigmas, built in float64 (numpy) and rounded at the end."""
    lam = [-math.log(float(s[0])) for s in t_prev_list]
    h = -math.log(float(t[0])) - lam[-1]
    z = -h
    r = [(lam[-(j + 1)] - lam[-1]) / h for j in range(1, order)] + [1.0]
    phi = math.expm1(z)
    b_h = z if variant == "bh1" else math.expm1(z)
    g = [phi / z - 1]
    for n in range(1, order):
        g.append(g[-1] / z - 1 / math.factorial(n + 1))
    b = np.array([g[n - 1] * math.factorial(n) / b_h for n in range(1, order + 1)])
    R = np.array([[rr**row for rr in r] for row in range(order)])
    rho_p = None if order == 1 else np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    rho_c = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return f32(r), None if rho_p is None else f32(rho_p), f32(rho_c), f32(phi), f32(b_h)


def reference_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    variant: str,
    coefficients: Callable[..., Coefficients] = reference_coefficients,
) -> torch.Tensor:
    """The reference's sample loop and update_fn, with its coefficient construction swappable."""
    dims = x.dim()
    expand = lambda v: v[(...,) + (None,) * (dims - 1)]  # noqa: E731
    order = min(3, len(sigmas) - 2)
    model_prev_list: list[torch.Tensor] = []
    t_prev_list: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        vec_t = sigmas[i].expand(x.shape[0])
        if i == 0:
            model_prev_list, t_prev_list = [model(x, vec_t)], [vec_t]
        else:
            k = i if i < order else order
            rks, rhos_p, rhos_c, h_phi_1, b_h = coefficients(t_prev_list, vec_t, k, variant)
            model_prev_0 = model_prev_list[-1]
            D1s = [(model_prev_list[-(j + 1)] - model_prev_0) / rks[j - 1] for j in range(1, k)]
            x_t_ = expand(vec_t / t_prev_list[-1]) * x - expand(h_phi_1) * model_prev_0
            stacked = torch.stack(D1s, dim=1) if D1s else None
            pred_res = torch.tensordot(stacked, rhos_p, dims=([1], [0])) if D1s else 0
            x_t = x_t_ - expand(b_h) * pred_res
            model_t = model(x_t, vec_t)
            corr_res = torch.tensordot(stacked, rhos_c[:-1], dims=([1], [0])) if D1s else 0
            x = x_t_ - expand(b_h) * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
            model_prev_list.append(model_t)
            t_prev_list.append(vec_t)
        model_prev_list, t_prev_list = model_prev_list[-order:], t_prev_list[-order:]
    return model_prev_list[-1]


def toy_torch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.tanh(1.5 * x) * (1 - sigma) + 0.3 * torch.sin(2 * x) * sigma + 0.1


def wavy(seed: int) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """A deterministic denoiser whose prediction swings with sigma, as a random network's does.

    The swing makes the history differences D_j large, so the order-2/3 weights move the result;
    a prediction smooth in sigma (toy_torch) hides how they were built.
    """
    swing = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    return lambda x, sigma: toy_torch(x, sigma) + math.sin(40 * sigma) * swing


def sigma_vectors(sigmas: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [sigmas[i].expand(batch) for i in range(len(sigmas))]


def each_step(steps: int, seq_len: int) -> list[tuple[list[torch.Tensor], torch.Tensor, int]]:
    """(history, t, order) of every update of an N-step loop, as the reference passes them."""
    vectors = sigma_vectors(flux_sigmas(steps, seq_len), 1)
    p = min(3, steps - 1)
    return [(vectors[max(0, i - p) : i], vectors[i], min(i, p)) for i in range(1, steps)]


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("seq_len", [APP_SEQ, TINY_SEQ])
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_coefficients_are_the_references_bit_for_bit(steps: int, seq_len: int, variant: str) -> None:
    for history, t, order in each_step(steps, seq_len):
        rks, rhos_p, rhos_c, h_phi_1, b_h = reference_coefficients(history, t, order, variant)
        ours = step_coefficients(history, t, order, variant)
        assert ours.ratios == rks[:-1].tolist()
        assert ours.predictor == ([] if rhos_p is None else rhos_p.tolist())
        assert ours.corrector == rhos_c.tolist()
        assert (ours.phi, ours.b_h, ours.decay) == (h_phi_1.item(), b_h.item(), (t / history[-1])[0].item())


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_float64_construction_gives_other_weights(variant: str) -> None:
    # What building the same coefficients in float64 changes: the float32 recursion behind the
    # order-2/3 weights cancels as the steps shrink (most near sigma = 1, where the shifted
    # schedule's steps in log-sigma are smallest), so the corrector weights drift from exact.
    def worst(steps: int) -> float:
        gaps = []
        for history, t, order in each_step(steps, APP_SEQ):
            reference = reference_coefficients(history, t, order, variant)[2].double()
            exact = exact_coefficients(history, t, order, variant)[2].double()
            gaps.append(((reference - exact).norm() / exact.norm()).item())
        return max(gaps)

    assert 1e-2 < worst(10) < worst(25) < worst(50)
    assert worst(50) > 1  # the worst step's weights are more than 100 % off at 50 steps


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_loop_matches_the_reference_loop(steps: int, variant: str) -> None:
    denoise = wavy(steps)
    noise = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(steps))
    sigmas = flux_sigmas(steps, APP_SEQ)
    model = lambda x, t: denoise(x, t[0].item())  # noqa: E731
    expected = reference_sample(model, noise.clone(), sigmas, variant)
    scale = expected.abs().max().item()

    ours = sample_unipc(denoise, noise.clone(), sigmas, variant=variant)
    assert ours.dtype == torch.float32
    assert (ours - expected).abs().max().item() <= LOOP_TOL * scale

    # The same loop with float64-built coefficients lands well outside that tolerance.
    exact = reference_sample(model, noise.clone(), sigmas, variant, coefficients=exact_coefficients)
    assert (exact - expected).abs().max().item() > 2 * LOOP_TOL * scale


@pytest.mark.parametrize("steps", [1, 2, 4, 25])
def test_one_model_call_per_step(steps: int) -> None:
    seen: list[float] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(sigma)
        return toy_torch(x, sigma)

    sigmas = flux_sigmas(steps, 144)
    sample_unipc(denoise, torch.randn(1, 4), sigmas)
    assert seen == [float(s) for s in sigmas[:-1]]  # sigma_N = 0 never evaluated


def test_constant_denoiser_stays_on_the_exact_flow() -> None:
    # x0 constant => the flow is x(sigma) = c + (sigma / sigma_0)(x_init - c): every step must land on it,
    # up to the float32 rounding of sigma / s and expm1(-h) (the reference's coefficient dtype).
    c = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    x_init = torch.tensor([1.0, 0.5, -0.7], dtype=torch.float64)
    sigmas = flux_sigmas(10, 144, shift=3.0)
    states: list[StepInfo] = []
    out = sample_unipc(lambda x, s: c.clone(), x_init.clone(), sigmas, callback=states.append)
    assert torch.equal(out, c)
    assert [s.step for s in states] == list(range(10))
    for info in states:
        exact = c + (info.sigma / float(sigmas[0])) * (x_init - c)
        assert torch.allclose(info.x, exact, atol=1e-7, rtol=0), info.step


@pytest.mark.parametrize("variant, sizes", [("bh1", [16, 32, 64]), ("bh2", [8, 16, 32, 64])])
def test_convergence_order_on_gaussian_data(variant: str, sizes: list[int]) -> None:
    # Data x0 ~ N(mu, s^2) per element; x_sigma = (1 - sigma) x0 + sigma eps. The probability-flow ODE
    # maps x(sigma) = (1 - sigma) mu + std(sigma) z, std^2 = (1 - sigma)^2 s^2 + sigma^2, and the exact
    # x0 prediction is E[x0 | x] = mu + (1 - sigma) s^2 / std^2 (x - (1 - sigma) mu).
    # Steps uniform in lambda = -ln sigma from 0.9 to 0.05 (float32, as the sampler takes them); the
    # sampler returns the x0 prediction at the last sigma, compared with the exact one on the exact
    # trajectory (float64 latents). UniPC-3 with its order-1 start (local error O(h^3) on the first
    # step) is third order overall, bh2 still above 3 here. Beyond ~100 steps the float32
    # coefficient construction, not the step size, sets the error (~4e-7), so sizes stop there.
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, generator=g, dtype=torch.float64)
    s = torch.rand(64, generator=g, dtype=torch.float64) * 0.5 + 0.1
    z = torch.randn(64, generator=g, dtype=torch.float64)

    def std(sigma: float) -> torch.Tensor:
        return ((1 - sigma) ** 2 * s**2 + sigma**2).sqrt()

    def x0(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return mu + (1 - sigma) * s**2 / std(sigma) ** 2 * (x - (1 - sigma) * mu)

    def exact_x(sigma: float) -> torch.Tensor:
        return (1 - sigma) * mu + std(sigma) * z

    errors = []
    for n in sizes:
        sigmas = torch.exp(-torch.linspace(-math.log(0.9), -math.log(0.05), n, dtype=torch.float64)).float().tolist()
        out = sample_unipc(x0, exact_x(sigmas[0]), [*sigmas, 0.0], variant=variant)
        errors.append((out - x0(exact_x(sigmas[-1]), sigmas[-1])).abs().max().item())
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(order > 2.8 for order in orders), (errors, orders)
    if variant == "bh1":
        assert all(order < 3.35 for order in orders), (errors, orders)


def test_callback_can_cancel() -> None:
    def stop_at_two(info: StepInfo) -> None:
        if info.step == 2:
            raise GenerationCancelled()

    calls = []
    with pytest.raises(GenerationCancelled):
        sample_unipc(lambda x, s: calls.append(s) or x * 0.5, torch.ones(3), flux_sigmas(10, 144), callback=stop_at_two)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "sigmas, variant",
    [
        ([1.0], "bh1"),
        ([1.0, 1.0, 0.0], "bh1"),
        ([1.0, 1.0 - 1e-9, 0.0], "bh1"),  # decreasing in float64, equal in float32
        ([0.5, 0.7, 0.0], "bh1"),
        ([1.0, 0.0], "bh3"),
        ([1.0, -0.1, 0.0], "bh1"),
    ],
)
def test_bad_arguments(sigmas: list[float], variant: str) -> None:
    with pytest.raises(ConfigError):
        sample_unipc(lambda x, s: x, torch.ones(2), sigmas, variant=variant)


def test_sigmas_are_used_as_float32() -> None:
    seen: list[float] = []
    sample_unipc(lambda x, s: seen.append(s) or toy_torch(x, s), torch.ones(1, 3), [0.9, 0.3, 0.1, 0.0])
    assert seen == torch.tensor([0.9, 0.3, 0.1]).tolist() and seen[0] != 0.9


def test_latents_need_a_batch_dimension() -> None:
    with pytest.raises(InputError):
        sample_unipc(toy_torch, torch.tensor(1.0), [1.0, 0.0])
