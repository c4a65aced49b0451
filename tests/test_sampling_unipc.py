from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from framepack.errors import ConfigError, GenerationCancelled
from framepack.sampling.schedule import flux_sigmas
from framepack.sampling.unipc import StepInfo, sample_unipc


# --- an independent transcription of sampling.md §3, in numpy float64 -----------------------
def reference_unipc(denoise, x: np.ndarray, sigmas: list[float], variant: str) -> np.ndarray:
    n = len(sigmas) - 1
    p = min(3, n - 1)
    lam = lambda s: -math.log(s)  # noqa: E731
    M: list[np.ndarray] = []
    S: list[float] = []
    for i in range(n):
        t = sigmas[i]
        if i == 0:
            M = [denoise(x, t)]
            S = [t]
        else:
            k = i if i < p else p
            s, m0 = S[-1], M[-1]
            h = lam(t) - lam(s)
            z = -h
            r, D = [], []
            for j in range(1, k):
                rj = (lam(S[-(j + 1)]) - lam(s)) / h
                r.append(rj)
                D.append((M[-(j + 1)] - m0) / rj)
            r.append(1.0)
            phi = math.expm1(z)
            B = z if variant == "bh1" else math.expm1(z)
            g = [phi / z - 1]
            for m in range(1, k):
                g.append(g[-1] / z - 1 / math.factorial(m + 1))
            b = np.array([g[m - 1] * math.factorial(m) / B for m in range(1, k + 1)])
            R = np.array([[rr ** row for rr in r] for row in range(k)])
            rho_p = [] if k == 1 else [0.5] if k == 2 else np.linalg.solve(R[: k - 1, : k - 1], b[: k - 1])
            rho_c = [0.5] if k == 1 else np.linalg.solve(R, b)
            xt = (t / s) * x - phi * m0
            x_pred = xt - B * sum((rho_p[j] * D[j] for j in range(k - 1)), np.zeros_like(x))
            m_t = denoise(x_pred, t)
            x = xt - B * (sum((rho_c[j] * D[j] for j in range(k - 1)), np.zeros_like(x)) + rho_c[k - 1] * (m_t - m0))
            M.append(m_t)
            S.append(t)
        if p > 0:
            M, S = M[-p:], S[-p:]
    return M[-1]


def toy_numpy(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.tanh(1.5 * x) * (1 - sigma) + 0.3 * np.sin(2 * x) * sigma + 0.1


def toy_torch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.tanh(1.5 * x) * (1 - sigma) + 0.3 * torch.sin(2 * x) * sigma + 0.1


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 25])
def test_matches_independent_transcription(steps: int, variant: str) -> None:
    noise = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(steps))
    sigmas = flux_sigmas(steps, 144)
    expected = reference_unipc(toy_numpy, noise.double().numpy(), [float(s) for s in sigmas], variant)

    ours64 = sample_unipc(toy_torch, noise.double(), sigmas, variant=variant).numpy()
    assert np.abs(ours64 - expected).max() <= 1e-12

    ours32 = sample_unipc(toy_torch, noise, sigmas, variant=variant)
    assert ours32.dtype == torch.float32
    assert np.abs(ours32.double().numpy() - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("steps", [1, 2, 4, 25])
def test_one_model_call_per_step(steps: int) -> None:
    seen: list[float] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(sigma)
        return toy_torch(x, sigma)

    sigmas = flux_sigmas(steps, 144)
    sample_unipc(denoise, torch.randn(1, 4), sigmas)
    assert seen == [float(s) for s in sigmas[:-1]]  # sigma_N = 0 never evaluated


def test_constant_denoiser_is_integrated_exactly() -> None:
    # x0 constant => the flow is x(sigma) = c + (sigma / sigma_0)(x_init - c): every step must land on it.
    c = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    x_init = torch.tensor([1.0, 0.5, -0.7], dtype=torch.float64)
    sigmas = flux_sigmas(10, 144, shift=3.0)
    states: list[StepInfo] = []
    out = sample_unipc(lambda x, s: c.clone(), x_init.clone(), sigmas, callback=states.append)
    assert torch.equal(out, c)
    assert [s.step for s in states] == list(range(10))
    for info in states:
        exact = c + (info.sigma / float(sigmas[0])) * (x_init - c)
        assert torch.allclose(info.x, exact, atol=1e-13, rtol=0), info.step


@pytest.mark.parametrize("variant, sizes", [("bh1", [64, 128, 256]), ("bh2", [256, 512, 1024])])
def test_convergence_order_on_gaussian_data(variant: str, sizes: list[int]) -> None:
    # Data x0 ~ N(mu, s^2) per element; x_sigma = (1 - sigma) x0 + sigma eps. The probability-flow ODE
    # maps x(sigma) = (1 - sigma) mu + std(sigma) z, std^2 = (1 - sigma)^2 s^2 + sigma^2, and the exact
    # x0 prediction is E[x0 | x] = mu + (1 - sigma) s^2 / std^2 (x - (1 - sigma) mu).
    # Steps uniform in lambda = -ln sigma from 0.9 to 0.05; the sampler returns the x0 prediction at
    # sigma = 0.05, compared with the exact one on the exact trajectory. UniPC-3 with its order-1
    # start (local error O(h^3) on the first step) is third order overall.
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

    first, last = 0.9, 0.05
    errors = []
    for n in sizes:
        sigmas = torch.exp(-torch.linspace(-math.log(first), -math.log(last), n, dtype=torch.float64)).tolist() + [0.0]
        out = sample_unipc(x0, exact_x(first), sigmas, variant=variant)
        errors.append((out - x0(exact_x(last), last)).abs().max().item())
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(2.8 < order < 3.35 for order in orders), (errors, orders)


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
    [([1.0], "bh1"), ([1.0, 1.0, 0.0], "bh1"), ([0.5, 0.7, 0.0], "bh1"), ([1.0, 0.0], "bh3"), ([1.0, -0.1, 0.0], "bh1")],
)
def test_bad_arguments(sigmas: list[float], variant: str) -> None:
    with pytest.raises(ConfigError):
        sample_unipc(lambda x, s: x, torch.ones(2), sigmas, variant=variant)
