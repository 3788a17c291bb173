"""Science checks: our SGLD LLC estimate against exactly known learning coefficients.

Deep linear networks (DLN) use the closed-form population loss of Gaussian-input
regression, K(w) = 1/2 ||W_L ... W_1 - W0||_F^2 (x ~ N(0, I), unit noise), so no data
noise enters and n_beta plays the role of n. The tested points w* are the *most
singular* realisations of the true map, where the local coefficient equals Aoyagi's
global one:
- rank 0 (W0 = 0): w* = 0, every layer zero;
- rank r > 0: every layer is diag(1, ..., 1, 0, ...) with r ones, so the product is
  the rank-r W0 = w*'s product and all remaining rows/columns are zero.

Hyperparameters: for these homogeneous losses only n_beta / gamma^L and lr * gamma
matter. n_beta = 300, gamma = 1 keeps the localization bias small (the exact localized
value is within a few % of lambda: checked by quadrature for L = 2), and lr = 4e-4
mixes in ~3000 steps while the discretisation bias stays small. Measured ratios
est / lambda with these settings were 0.95-1.05.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from phaseboard.analysis.llc import LLCConfig, estimate_llc
from phaseboard.analysis.restrict import estimate_llc_restricted
from tests.science.aoyagi import aoyagi_lambda


class DLN(nn.Module):
    """Deep linear network with layers diag(1,..,1,0,..) (``rank`` ones) at init."""

    def __init__(self, widths: list[int], rank: int = 0) -> None:
        super().__init__()
        self.layers = nn.ParameterList()
        for d_in, d_out in zip(widths[:-1], widths[1:], strict=True):
            w = torch.zeros(d_out, d_in, dtype=torch.float64)
            w[range(rank), range(rank)] = 1.0
            self.layers.append(nn.Parameter(w))

    def product(self) -> torch.Tensor:
        # Index (not slice) the ParameterList: slicing builds a new list that bypasses
        # torch.func.functional_call's parameter swap.
        w = self.layers[0]
        for i in range(1, len(self.layers)):
            w = self.layers[i] @ w
        return w


def test_aoyagi_oracle_matches_hand_checked_cases() -> None:
    # One layer = regular model: d / 2.
    assert aoyagi_lambda([3, 4], 0) == (6, 1)
    # Two layers = reduced-rank regression (Aoyagi & Watanabe 2005):
    # N=M=H=2, r=0 (sum even): (2(H+r)(M+N) - (M-N)^2 - (H+r)^2) / 8 = 12/8.
    assert aoyagi_lambda([2, 2, 2], 0)[0] == pytest.approx(1.5)
    # Odd case N=M=2, H=1: (8 - 0 - 1 + 1) / 8 = 1, multiplicity 2.
    assert aoyagi_lambda([2, 1, 2], 0) == (1, 2)
    # N=M=H=3, r=1: (2*4*6 - 0 - 16) / 8 = 4.
    assert aoyagi_lambda([3, 3, 3], 1)[0] == 4
    # Bottleneck wider than the rest allows: lambda = H M / 2.
    assert aoyagi_lambda([4, 1, 1], 0)[0] == pytest.approx(0.5)
    # Full rank in a 1-layer model is still regular: d / 2.
    assert aoyagi_lambda([2, 3], 2)[0] == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("widths", "rank"),
    [([3, 2, 1], 0), ([4, 2, 4], 0), ([4, 2, 2, 4], 0), ([3, 3, 3], 1)],
    ids=["3-2-1", "4-2-4", "4-2-2-4", "3-3-3-rank1"],
)
def test_dln_llc_matches_aoyagi_within_10_percent(widths: list[int], rank: int) -> None:
    lam, multiplicity = aoyagi_lambda(widths, rank)
    assert multiplicity == 1  # no log-log corrections at finite n
    model = DLN(widths, rank)
    w0 = model.product().detach().clone()

    def loss(m: nn.Module, _batch: object) -> torch.Tensor:
        return 0.5 * ((m.product() - w0) ** 2).sum()

    cfg = LLCConfig(
        lr=4e-4, n_beta=300.0, localization=1.0, num_chains=16, num_draws=2400,
        num_burnin_steps=600, dtype="float64", seed=0,
    )  # fmt: skip
    res = estimate_llc(model, loss, [torch.zeros(1)], cfg)
    assert res.diverged == []
    assert res.mean == pytest.approx(float(lam), rel=0.10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("widths", "rank"), [([4, 2, 2, 4], 0), ([3, 3, 3], 1)], ids=["4-2-2-4", "3-3-3-rank1"]
)
def test_rmsprop_sgld_dln_llc_matches_aoyagi_within_10_percent(
    widths: list[int], rank: int
) -> None:
    """devinterp's RMSprop-preconditioned SGLD (alpha 0.99, eps 0.1). Near w* the
    preconditioner is ~1/eps = 10, so lr = 4e-5 gives the SGLD test's effective step.
    Measured est / lambda on all four DLN cases: 0.96-0.98 (at lr 4e-4: 1.18-1.56)."""
    lam, _ = aoyagi_lambda(widths, rank)
    model = DLN(widths, rank)
    w0 = model.product().detach().clone()

    def loss(m: nn.Module, _batch: object) -> torch.Tensor:
        return 0.5 * ((m.product() - w0) ** 2).sum()

    cfg = LLCConfig(
        lr=4e-5, n_beta=300.0, localization=1.0, num_chains=16, num_draws=2400,
        num_burnin_steps=600, dtype="float64", seed=0, sampler="rmsprop_sgld",
    )  # fmt: skip
    res = estimate_llc(model, loss, [torch.zeros(1)], cfg)
    assert res.diverged == [] and res.verdict == "ok", res.verdict_detail
    assert res.mean == pytest.approx(float(lam), rel=0.10)


@pytest.mark.slow
def test_normal_crossing_llc_is_min_over_one_over_2k() -> None:
    """K = w1^2 w2^4 has lambda = min(1/2, 1/4) = 1/4 (multiplicity 1).

    n_beta = 1e4, gamma = 1: exact localized value 0.236 by quadrature (w1 integrated
    analytically); lr = 3e-4 was calibrate()'s recommendation (measured 0.245).
    """

    class NormalCrossing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def loss(m: nn.Module, _batch: object) -> torch.Tensor:
        return m.w[0] ** 2 * m.w[1] ** 4

    cfg = LLCConfig(
        lr=3e-4, n_beta=1e4, localization=1.0, num_chains=16, num_draws=3000,
        num_burnin_steps=750, dtype="float64",
    )  # fmt: skip
    res = estimate_llc(NormalCrossing(), loss, [torch.zeros(1)], cfg)
    assert res.diverged == []
    assert res.mean == pytest.approx(0.25, rel=0.15)


def test_weights_the_loss_ignores_have_zero_llc_and_used_ones_do_not() -> None:
    class Partly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Parameter(torch.zeros(3, dtype=torch.float64))
            self.unused = nn.Parameter(torch.zeros(5, dtype=torch.float64))

    def loss(m: nn.Module, _batch: object) -> torch.Tensor:
        return 0.5 * (m.used**2).sum()

    cfg = LLCConfig(lr=1e-3, n_beta=100.0, localization=1.0, num_chains=8, num_draws=400,
                    num_burnin_steps=100, dtype="float64")  # fmt: skip
    res = estimate_llc_restricted(
        Partly(), loss, [torch.zeros(1)], cfg, {"unused": {"unused": None}, "used": {"used": None}}
    )
    assert res["unused"].mean == 0.0
    # Regular 3-parameter quadratic: d/2 * n_beta / (n_beta + gamma) ~= 1.49.
    assert res["used"].mean == pytest.approx(1.5, rel=0.15)
