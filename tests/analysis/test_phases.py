"""Stage-boundary detection on synthetic curves with known boundaries.

Tolerance: a detected boundary counts as found within 0.1 decades of log10(step).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.phases import (
    Boundary,
    detect_boundaries,
    ema_smooth,
    llc_boundaries,
    loss_change_points,
)

TOL_DECADES = 0.1
STEPS = np.unique(np.round(np.logspace(1, 5, 60)).astype(int))
X = np.log10(STEPS)


def near(boundaries: list[Boundary], step: float, tol: float = TOL_DECADES) -> bool:
    return any(abs(math.log10(b.step) - math.log10(step)) <= tol for b in boundaries)


def bump_llc(rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """LLC rising to a peak at 1e3, then falling into a trough at 1e4."""
    peak = 20 * np.exp(-0.5 * ((X - 3) / 0.3) ** 2)
    trough = 10 * np.exp(-0.5 * ((X - 4) / 0.25) ** 2)
    return 10 + peak - trough + rng.normal(0, noise, len(X))


@pytest.mark.parametrize("seed", range(5))
def test_llc_peak_and_trough_found_within_tolerance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    found = llc_boundaries(STEPS, bump_llc(rng), stds=np.full(len(X), 1.0))
    kinds = {b.kind: b for b in found}
    assert len(found) == 2, found
    assert near([kinds["llc_peak"]], 1e3) and near([kinds["llc_trough"]], 1e4)
    assert all(b.source == "llc" and b.score >= 6 for b in found)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("with_stds", [True, False])
def test_flat_noisy_llc_curve_gives_no_boundary(seed: int, with_stds: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    llc = 10 + rng.normal(0, 1.0, len(X))
    stds = np.full(len(X), 1.0) if with_stds else None
    assert llc_boundaries(STEPS, llc, stds=stds) == []


def test_monotone_llc_curve_has_no_critical_point() -> None:
    assert llc_boundaries(STEPS, 5 * X + np.random.default_rng(0).normal(0, 0.5, len(X))) == []


def loss_curve(rng: np.random.Generator) -> np.ndarray:
    """log-loss flat until 1e3, falling linearly in log-step to 1e4, then flat."""
    log_loss = np.where(X < 3, 1.0, np.where(X < 4, 1.0 - 2 * (X - 3), -1.0))
    return np.exp(log_loss + rng.normal(0, 0.02, len(X)))


@pytest.mark.parametrize("seed", range(3))
def test_loss_change_points_found_within_tolerance(seed: int) -> None:
    found = loss_change_points(STEPS, loss_curve(np.random.default_rng(seed)))
    assert len(found) == 2, found
    assert near(found, 1e3) and near(found, 1e4)
    assert all(b.kind == "change_point" and b.source == "loss:train_loss" for b in found)


@pytest.mark.parametrize("seed", range(5))
def test_flat_noisy_loss_gives_no_change_point(seed: int) -> None:
    values = np.exp(np.random.default_rng(seed).normal(0, 0.05, len(X)))
    assert loss_change_points(STEPS, values, source="loss:test_loss") == []


def test_detect_boundaries_merges_agreeing_sources_and_sorts() -> None:
    rng = np.random.default_rng(0)
    out = detect_boundaries(
        STEPS,
        bump_llc(rng),
        np.full(len(X), 1.0),
        {"train_loss": (STEPS, loss_curve(rng))},
        merge_decades=0.1,
    )
    steps = [b.step for b in out]
    assert steps == sorted(steps)
    assert near(out, 1e3) and near(out, 1e4)
    merged = [b for b in out if abs(math.log10(b.step) - 3) < 0.1]
    # The agreeing sources are the boundary's source, not a label the user seems to have typed.
    assert len(merged) == 1 and merged[0].source == "llc+loss:train_loss"
    assert merged[0].label == ""
    assert set(merged[0].to_dict()) == {"step", "source", "kind", "score", "label"}


def test_ema_smooth_matches_tensorboard_debiased_ema() -> None:
    assert ema_smooth([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])
    # by hand: last = 0.5*0 + 0.5*1 = 0.5 -> /0.5 = 1; last = 0.25 + 1.5 = 1.75 -> /0.75
    assert ema_smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])
    assert ema_smooth([1.0, 2.0], 0.0) == [1.0, 2.0]
    out = ema_smooth([1.0, float("nan"), 1.0], 0.6)
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1]) and out[2] == pytest.approx(1.0)
