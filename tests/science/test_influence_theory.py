"""Science checks: the BIF and susceptibilities against closed forms on Gaussian posteriors.

Bayesian linear regression with squared loss l(w) = 1/2 (y - x'w)^2 and SGLD's training
loss L(w) = mean over the n training examples: at the least-squares w* the localised,
tempered posterior p(w) ∝ exp(-n_beta L(w) - gamma/2 |w - w*|^2) is exactly Gaussian,
N(w*, S) with S = (n_beta H + gamma I)^-1, H = X'X / n. Every loss is a quadratic in
delta = w - w*, so with residual r_i = y_i - x_i'w* and s_ij = x_i' S x_j

    Cov(l_i, l_j) = r_i r_j s_ij + s_ij^2 / 2,

and for general quadratics q = c + b'delta + 1/2 delta'Q delta: E q = c + tr(Q S) / 2,
Cov(q1, q2) = b1'S b2 + tr(Q1 S Q2 S) / 2, which gives susceptibilities in closed form too.

Settings that reach the stated tolerances (float64, full-batch gradients, so SGLD is exact
Langevin up to its step; 256 chains, a draw every 2 steps). The chain's exact stationary
covariance is (A (I - lr A / 4))^-1 for precision A: the tests compare against the
posterior S itself, so that Euler bias, lr * lambda_max(A) / 4, is inside the tolerance.
- BIF: the design makes A's eigenvalues 90, 110, 130; lr = 3e-4 (bias 1 %), 400 burn-in
  steps (the slowest mode relaxes in 2 / (lr * 90) = 74 steps), 600 draws. Tolerances:
  covariance relative Frobenius error < 6 %, correlation max abs error < 0.06; measured
  3.8 % and 0.030 (seed 0; seeds 1-2 with longer chains gave 2.2-2.8 %).
- Planted heads: A's eigenvalues 59-77; lr = 1e-3 (bias 1.9 %), 300 burn-in steps, 400
  draws. Tolerance: every (head, subset) susceptibility within 12 % of the largest entry
  of the closed form; measured 6.6 %; the sign structure holds at |z| > 25.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from phaseboard.analysis.influence import bayesian_influence, influence_matrix, susceptibilities
from phaseboard.analysis.llc import LLCConfig

pytestmark = pytest.mark.slow
F64 = torch.float64
N_BETA, GAMMA = 100.0, 10.0


def _config(lr: float, burnin: int, draws: int) -> LLCConfig:
    return LLCConfig(
        lr=lr, n_beta=N_BETA, localization=GAMMA, num_chains=256, num_draws=draws,
        num_burnin_steps=burnin, num_steps_bw_draws=2, dtype="float64", seed=0,
    )  # fmt: skip


def _squared(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-example 1/2 (y - f(x))^2."""
    return 0.5 * (batch[1] - model(batch[0])).square()


def _mean_squared(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return _squared(model, batch).mean()


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def _quadratic(
    x: torch.Tensor, y: torch.Tensor, w_star: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over rows of 1/2 (y - x'(w* + d))^2 as (c, b, Q): c + b'd + 1/2 d'Q d."""
    r = y - x @ w_star
    return (0.5 * r.square()).mean(), -(r[:, None] * x).mean(0), x.T @ x / len(x)


def _mean(q: tuple[torch.Tensor, ...], S: torch.Tensor) -> torch.Tensor:
    return q[0] + 0.5 * torch.trace(q[2] @ S)


def _cov(
    q1: tuple[torch.Tensor, ...], q2: tuple[torch.Tensor, ...], S: torch.Tensor
) -> torch.Tensor:
    return q1[1] @ S @ q2[1] + 0.5 * torch.trace(q1[2] @ S @ q2[2] @ S)


def test_bif_matches_the_gaussian_posterior_covariance_of_squared_losses() -> None:
    g = torch.Generator().manual_seed(0)
    d, n = 3, 40
    # X'X / n has eigenvalues 0.8, 1.0, 1.2: posterior precision eigenvalues 90, 110, 130
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=F64))
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    x = n**0.5 * q @ torch.diag(torch.tensor([0.8, 1.0, 1.2], dtype=F64).sqrt()) @ rot.T
    w_true = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    y = x @ w_true + 0.5 * torch.randn(n, generator=g, dtype=F64)
    w_star = torch.linalg.solve(x.T @ x, x.T @ y)
    # probes: six training examples (residuals of both signs) and four new points
    x_new = torch.randn(4, d, generator=g, dtype=F64)
    xp = torch.cat([x[:6], x_new])
    yp = torch.cat([y[:6], x_new @ w_true + 0.5 * torch.randn(4, generator=g, dtype=F64)])

    A = N_BETA * x.T @ x / n + GAMMA * torch.eye(d, dtype=F64)
    S = torch.linalg.inv(A)
    r = yp - xp @ w_star
    s = xp @ S @ xp.T
    theory = r[:, None] * r[None, :] * s + s.square() / 2  # Cov(l_i, l_j)

    res = bayesian_influence(
        Linear(w_star), _mean_squared, [(x, y)], (xp, yp), _config(3e-4, 400, 600),
        per_example_loss=_squared, covariance=True,
    )  # fmt: skip
    assert len(res.chains) == 256  # a Gaussian posterior: no chain is left out
    rel = float((res.matrix - theory).norm() / theory.norm())
    assert rel < 0.06, f"covariance relative Frobenius error {rel:.3f}"
    corr_theory = theory / (theory.diag()[:, None] * theory.diag()[None, :]).sqrt()
    corr = influence_matrix(res.stacked)  # the default: correlation, from the same draws
    worst = float((corr - corr_theory).abs().max())
    assert worst < 0.06, f"correlation max abs error {worst:.3f}"


class TwoHeads(nn.Module):
    """Two linear heads on disjoint input coordinates: head_a reads x[:2], head_b x[2:]."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.head_a = nn.Parameter(w[:2].clone())
        self.head_b = nn.Parameter(w[2:].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] @ self.head_a + x[:, 2:] @ self.head_b


def test_planted_heads_each_serve_their_own_data_subset() -> None:
    """Subset s_a has inputs only head_a reads, s_b only head_b: each head's susceptibility
    to its own subset is negative (it serves it) and to the other's positive, and every
    entry matches the closed form."""
    g = torch.Generator().manual_seed(0)

    def subset(n: int, head: str) -> torch.Tensor:
        x = torch.randn(n, 4, generator=g, dtype=F64)
        x[:, 2:] = 0 if head == "a" else x[:, 2:]
        x[:, :2] = 0 if head == "b" else x[:, :2]
        return x

    w_true = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=F64)

    def label(x: torch.Tensor) -> torch.Tensor:
        return x @ w_true + 0.5 * torch.randn(len(x), generator=g, dtype=F64)

    x = torch.cat([subset(30, "a"), subset(30, "b")])
    y = label(x)
    w_star = torch.linalg.solve(x.T @ x, x.T @ y)
    probes = {}
    for head in "ab":
        xs = subset(8, head)
        probes[f"s_{head}"] = (xs, label(xs))

    res = susceptibilities(
        TwoHeads(w_star), _mean_squared, [(x, y)], _config(1e-3, 300, 400),
        weight_groups={"head_a": {"head_a": None}, "head_b": {"head_b": None}},
        observables=probes, reference=(x, y), per_example_loss=_squared,
    )  # fmt: skip

    A = N_BETA * x.T @ x / len(x) + GAMMA * torch.eye(4, dtype=F64)
    S_full = torch.linalg.inv(A)
    restricted = {}
    for name, idx in (("head_a", [0, 1]), ("head_b", [2, 3])):
        S = torch.zeros(4, 4, dtype=F64)
        S[torch.tensor(idx)[:, None], torch.tensor(idx)] = torch.linalg.inv(A[idx][:, idx])
        restricted[name] = S
    ref = _quadratic(x, y, w_star)
    theory = torch.zeros(2, 2, dtype=F64)
    for gi, group in enumerate(res.groups):
        S = restricted[group]
        for pi, probe in enumerate(res.probes):
            xs, ys = probes[probe]
            chis = []
            for i in range(len(xs)):
                one = _quadratic(xs[i : i + 1], ys[i : i + 1], w_star)
                shift = tuple(a - b for a, b in zip(ref, one, strict=True))  # L - l_x
                phi_mean = _mean(ref, S) - ref[0]  # E_C[L - L(w*)]
                mismatch = _mean(shift, S) - _mean(shift, S_full)
                chis.append(_cov(ref, shift, S) + phi_mean * mismatch)
            theory[gi, pi] = torch.stack(chis).mean()

    # the planted structure: own subset negative, the other head's subset positive
    assert res.groups == ["head_a", "head_b"] and res.probes == ["s_a", "s_b"]
    assert theory[0, 0] < 0 < theory[0, 1] and theory[1, 1] < 0 < theory[1, 0]
    z = res.matrix / res.matrix_se
    assert z[0, 0] < -3 and z[0, 1] > 3 and z[1, 1] < -3 and z[1, 0] > 3, z
    worst = float((res.matrix - theory).abs().max() / theory.abs().max())
    assert worst < 0.12, f"susceptibility max error {worst:.3f} of the largest entry"
