"""Science checks of the defaults that decide whether an LLC number can be trusted: the
bias checks every estimate carries and calibration's recommendation, on cases whose
learning coefficient is known exactly (Aoyagi's formula for deep linear networks; a
two-layer one is reduced-rank regression).

Setting throughout (as in ``test_llc_theory``): the closed-form population loss
1/2 ||W_L ... W_1 - W0||^2 at the most singular w*, n_beta = 300, float64, 16 chains.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from phaseboard.analysis.llc import LLCConfig, calibrate, estimate_llc
from tests.science.aoyagi import aoyagi_lambda
from tests.science.test_llc_theory import DLN

GRID = {"lrs": (1e-4, 2e-4, 4e-4, 1e-3, 2e-3, 4e-3), "localizations": (1.0, 10.0, 100.0)}


def _case(widths: list[int], rank: int) -> tuple[nn.Module, object, float]:
    lam, multiplicity = aoyagi_lambda(widths, rank)
    assert multiplicity == 1  # no log-log corrections at finite n
    model = DLN(widths, rank)
    w0 = model.product().detach().clone()

    def loss(m: nn.Module, _batch: object) -> torch.Tensor:
        return 0.5 * ((m.product() - w0) ** 2).sum()

    return model, loss, float(lam)


def _config(**overrides: object) -> LLCConfig:
    base: dict[str, object] = dict(
        n_beta=300.0, localization=1.0, num_chains=16, num_draws=2400, num_burnin_steps=600,
        dtype="float64", seed=0,
    )  # fmt: skip
    return LLCConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _estimate(widths: list[int], rank: int, **overrides: object) -> tuple[object, float]:
    model, loss, lam = _case(widths, rank)
    return estimate_llc(model, loss, [torch.zeros(1)], _config(**overrides)), lam


# --- calibration -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("widths", "rank", "draws"),
    [
        ([3, 2, 1], 0, 2400),
        ([4, 2, 4], 0, 2400),
        ([3, 3, 3], 1, 2400),
        ([6, 3, 5], 0, 2400),  # reduced-rank regression N=6, H=3, M=5: lambda = 7
        ([6, 4, 5], 1, 2400),  # reduced-rank regression N=6, H=4, M=5, rank 1: lambda = 10.5
        ([4, 2, 2, 4], 0, 6000),  # three layers mix slowly: lr / 2 needs the longer run
    ],
    ids=["3-2-1", "4-2-4", "3-3-3-rank1", "rrr-6-3-5", "rrr-6-4-5-rank1", "4-2-2-4"],
)
def test_calibration_recommends_a_setting_within_15_percent_of_lambda(
    widths: list[int], rank: int, draws: int
) -> None:
    """Grid lr 1e-4..4e-3 (factor ~2) x localization 1, 10, 100; ``draws`` draws after a
    quarter as many burn-in steps. Tolerance: the recommended setting's estimate within
    15 % of lambda (measured 0.96-0.99 lambda on all six)."""
    model, loss, lam = _case(widths, rank)
    cfg = _config(num_draws=draws, num_burnin_steps=draws // 4)
    rep = calibrate(model, loss, [torch.zeros(1)], cfg, **GRID)  # type: ignore[arg-type]
    rec = rep.recommended
    assert rec is not None, rep.summary()
    assert rec.localization == 1.0, rep.summary()  # the weakest pull
    assert rec.mean == pytest.approx(lam, rel=0.15), rep.summary()
    # every strong-pull setting is flagged, never silently ok
    assert all(not e.ok for e in rep.entries if e.localization == 100.0), rep.summary()


@pytest.mark.slow
def test_calibration_does_not_pick_the_biased_stronger_localization() -> None:
    """The trap, on a DLN 4-2-4 (lambda 3.5): at lr 1e-2 a weak pull diverges and
    a strong one (localization 100) is 'ok' by the older verdicts, so the old rule
    (largest ok lr, then weakest localization) took lr 1e-2 / localization 100 and an
    estimate ~0.2 lambda. The strong pull is now flagged and the weak one recommended."""
    model, loss, lam = _case([4, 2, 4], 0)
    grid = {"lrs": (2e-4, 4e-3, 1e-2), "localizations": (1.0, 100.0)}
    old = calibrate(model, loss, [torch.zeros(1)], _config(bias_checks=False), **grid)  # type: ignore[arg-type]
    old_pick = max((e for e in old.entries if e.ok), key=lambda e: (e.lr, -e.localization))
    assert (old_pick.lr, old_pick.localization) == (1e-2, 100.0)
    assert old_pick.mean < 0.5 * lam  # badly biased down
    new = calibrate(model, loss, [torch.zeros(1)], _config(), **grid)  # type: ignore[arg-type]
    strong = [e for e in new.entries if e.localization == 100.0]
    assert all(e.verdict in ("localization bias", "step-size bias") for e in strong), new.summary()
    assert new.recommended is not None and new.recommended.localization == 1.0
    assert new.recommended.mean == pytest.approx(lam, rel=0.15)


# --- bias checks: settings the older verdicts called 'ok', both directions -----------------


@pytest.mark.slow
def test_ten_times_the_lr_is_step_size_bias() -> None:
    """DLN 4-2-2-4 (lambda 2) at lr 4e-3: ~1.6 lambda, 'ok' before these checks."""
    res, lam = _estimate([4, 2, 2, 4], 0, lr=4e-3)
    assert res.mean > 1.3 * lam  # the bias the check is about
    assert res.verdict == "step-size bias", res.verdict_detail


@pytest.mark.slow
def test_localization_100_is_localization_bias() -> None:
    """DLN 4-2-2-4 at localization 100: ~0.005 lambda, 'ok' before these checks."""
    res, lam = _estimate([4, 2, 2, 4], 0, lr=4e-4, localization=100.0)
    assert res.mean < 0.05 * lam
    assert res.verdict == "localization bias", res.verdict_detail


@pytest.mark.slow
def test_200_draws_without_burn_in_are_not_converged() -> None:
    """DLN 4-2-2-4, lr 4e-4, 200 draws and no burn-in: ~0.25 lambda, 'ok' before. The
    first half of the draws against the second says so (and lr / 2 disagrees too)."""
    res, lam = _estimate([4, 2, 2, 4], 0, lr=4e-4, num_draws=200, num_burnin_steps=0)
    assert res.mean < 0.5 * lam
    assert res.verdict == "not converged", res.verdict_detail
    assert res.checks["halves_shifted"] or res.checks["trend_t"] > 4
    assert res.checks["half_lr_shifted"] is True


@pytest.mark.slow
def test_rmsprop_sgld_at_too_large_an_lr_is_step_size_bias() -> None:
    """Reduced-rank regression N=6, H=3, M=5 (lambda 7), RMSprop-SGLD at lr 1.5e-3: ~1.6
    lambda, its lr / 2 chains ~1.36 lambda (13.7 ~ 2 lambda on a larger RRR was 'ok' by the
    older verdicts). At 2e-3 (~1.8 lambda) some of 16 chains diverge, a verdict of its own."""
    res, lam = _estimate(
        [6, 3, 5], 0, lr=1.5e-3, sampler="rmsprop_sgld", num_draws=1000, num_burnin_steps=250
    )
    assert res.mean > 1.4 * lam
    assert res.verdict == "step-size bias", res.verdict_detail


@pytest.mark.slow
@pytest.mark.parametrize(
    ("widths", "rank", "overrides"),
    [
        ([6, 3, 5], 0, {"lr": 2e-4}),
        ([6, 3, 5], 0, {"lr": 4e-5, "sampler": "rmsprop_sgld"}),
        ([3, 3, 3], 1, {"lr": 2e-4}),
        ([4, 2, 2, 4], 0, {"lr": 2e-4, "num_draws": 6000, "num_burnin_steps": 1500}),
    ],
    ids=["rrr-sgld", "rrr-rmsprop", "3-3-3-rank1", "4-2-2-4"],
)
def test_good_settings_pass_every_check(
    widths: list[int], rank: int, overrides: dict[str, object]
) -> None:
    """The other direction: settings whose estimate is right (within 10 %) are 'ok' -
    their lr / 2 and localization / 2 chains agree and their halves match."""
    res, lam = _estimate(widths, rank, **overrides)
    assert res.mean == pytest.approx(lam, rel=0.10)
    assert res.verdict == "ok", res.verdict_detail
