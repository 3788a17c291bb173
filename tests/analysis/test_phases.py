"""Stage-boundary detection on synthetic curves with known boundaries.

Tolerance: a detected boundary counts as found within 0.1 decades of log10(step).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from phaseboard.analysis.phases import (
    AGREE_DECADES,
    Boundary,
    agreeing_sources,
    detect_boundaries,
    ema_smooth,
    llc_boundaries,
    loss_change_points,
    measure_jumps,
    merge_sources,
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
    assert len(merged) == 1 and merged[0].source == "llc+loss:train_loss"
    assert agreeing_sources(merged[0]) == ["llc", "loss:train_loss"] and merged[0].label == ""
    assert set(merged[0].to_dict()) == {"step", "source", "kind", "score", "label"}


def test_ema_smooth_matches_tensorboard_debiased_ema() -> None:
    assert ema_smooth([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])
    # by hand: last = 0.5*0 + 0.5*1 = 0.5 -> /0.5 = 1; last = 0.25 + 1.5 = 1.75 -> /0.75
    assert ema_smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])
    assert ema_smooth([1.0, 2.0], 0.0) == [1.0, 2.0]
    out = ema_smooth([1.0, float("nan"), 1.0], 0.6)
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1]) and out[2] == pytest.approx(1.0)


# --- robustness: smooth curves levelling off have no stage; broad LLC peaks are found ----

FALSE_RATE_MAX = 0.02  # tolerance: at most 2 % of smooth curves get any boundary


def smooth_curves(n: int, seed: int = 0) -> list[np.ndarray]:
    """Power laws and exponential decays onto a floor, 1 % multiplicative noise."""
    rng = np.random.default_rng(seed)
    t = STEPS.astype(float)
    out = []
    for i in range(n):
        floor, amp = rng.uniform(0.1, 1.0), rng.uniform(1.0, 5.0)
        if i % 2 == 0:
            clean = floor + amp * t ** -rng.uniform(0.3, 1.0)
        else:
            clean = floor + amp * np.exp(-t / 10 ** rng.uniform(2.0, 4.5))
        out.append(clean * np.exp(rng.normal(0, 0.01, len(t))))
    return out


def test_bend_of_power_law_onto_floor_is_not_a_boundary() -> None:
    t = STEPS.astype(float)
    assert loss_change_points(STEPS, 0.5 + 3 * t**-0.5) == []
    assert loss_change_points(STEPS, 0.5 + 3 * np.exp(-t / 1000)) == []


@pytest.mark.slow
def test_smooth_curves_levelling_off_give_almost_no_false_boundary() -> None:
    curves = smooth_curves(200)
    false = sum(bool(loss_change_points(STEPS, y)) for y in curves)
    assert false / len(curves) <= FALSE_RATE_MAX, false


def test_simulated_smooth_run_with_minibatch_noise_has_no_boundary() -> None:
    """A logged train loss every 10 steps, power law onto a floor, 5 % step noise."""
    rng = np.random.default_rng(1)
    steps = np.arange(10, 20001, 10)
    for _ in range(3):
        loss = (0.3 + 2.5 * (1 + steps / 50) ** -0.7) * np.exp(rng.normal(0, 0.05, len(steps)))
        assert loss_change_points(steps, loss) == []


def test_real_stage_on_top_of_a_smooth_decay_is_still_found() -> None:
    """A plateau then a sharp drop is not a relaxation law: its corners stay boundaries."""
    t = STEPS.astype(float)
    drop = 1 / (1 + (t / 3000) ** 6)  # plateau, then a drop over ~0.3 decades at 3e3
    loss = (0.05 + 2.0 * drop) * np.exp(np.random.default_rng(2).normal(0, 0.01, len(t)))
    assert near(loss_change_points(STEPS, loss), 3000, tol=0.3)


def broad_peak(rng: np.random.Generator, scatter: float) -> np.ndarray:
    """LLC 20 with a Gaussian peak of height 10 and width 0.3 decades at step 1e3."""
    return 20 + 10 * np.exp(-0.5 * ((X - 3) / 0.3) ** 2) + rng.normal(0, scatter, len(X))


def test_llc_peak_of_height_10_against_chain_std_4_is_found() -> None:
    """Chain std 4 over 4 chains: the mean scatters by 2. Tolerance: found (a peak within
    0.15 decades of 1e3) in at least 38 of 40 seeds."""
    found = 0
    for seed in range(40):
        llc = broad_peak(np.random.default_rng(seed), scatter=2.0)
        out = llc_boundaries(STEPS, llc, stds=np.full(len(X), 4.0))
        found += any(b.kind == "llc_peak" and near([b], 1e3, tol=0.15) for b in out)
    assert found >= 38, found


def test_llc_peak_is_found_even_when_the_mean_scatters_by_the_chain_std() -> None:
    """The worst case (scatter 4, std 4): at least 30 of 40 seeds; a flat curve with the
    same noise gets a boundary in at most 2 of 40."""
    found = false = 0
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        out = llc_boundaries(STEPS, broad_peak(rng, scatter=4.0), stds=np.full(len(X), 4.0))
        found += any(b.kind == "llc_peak" and near([b], 1e3, tol=0.15) for b in out)
        flat = 20 + rng.normal(0, 4.0, len(X))
        false += bool(llc_boundaries(STEPS, flat, stds=np.full(len(X), 4.0)))
    assert found >= 30 and false <= 2, (found, false)


def test_merge_marks_agreement_of_sources_within_the_tolerance() -> None:
    inside = 10 ** (3 + 0.9 * AGREE_DECADES)
    outside = 10 ** (3 + 1.5 * AGREE_DECADES)
    found = [
        Boundary(1000.0, "llc", "llc_peak", 8.0),
        Boundary(inside, "essential_dynamics", "turning_point", 3.0),
        Boundary(outside, "progress:excluded_loss", "change_point", 9.0),
        Boundary(1e4, "loss:train_loss", "change_point", 5.0),
    ]
    out = merge_sources(found)
    assert [b.source for b in out] == [
        "essential_dynamics+llc",
        "progress:excluded_loss",
        "loss:train_loss",
    ]
    assert out[0].step == 1000.0 and out[0].kind == "llc_peak"  # the best-scoring member


def test_two_boundaries_of_one_source_are_never_merged() -> None:
    found = [Boundary(1000.0, "llc", "llc_peak", 8.0), Boundary(1050.0, "llc", "llc_trough", 7.0)]
    assert [b.step for b in merge_sources(found)] == [1000.0, 1050.0]


def test_extra_candidates_join_detection_and_keep_their_source() -> None:
    rng = np.random.default_rng(0)
    extra = [Boundary(10**3.05, "essential_dynamics", "turning_point", 4.0)]
    out = detect_boundaries(STEPS, bump_llc(rng), np.full(len(X), 1.0), {}, extra=extra)
    at_1e3 = [b for b in out if near([b], 1e3)]
    assert len(at_1e3) == 1 and at_1e3[0].source == "essential_dynamics+llc"


def test_measure_jump_is_a_progress_source_boundary() -> None:
    score = np.where(X < 3.5, 0.05, 0.9) + np.random.default_rng(0).normal(0, 0.01, len(X))
    out = measure_jumps(STEPS, score, name="prefix_matching")
    assert out and all(b.source == "progress:prefix_matching" for b in out)
    assert near(out, 10**3.5, tol=0.15)
