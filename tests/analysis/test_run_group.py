"""Group bands, function-space distance and joint PCA over several runs (analysis.run_group).

Tolerances: exact arithmetic on small arrays is compared at 1e-12 (float64 round-off);
values interpolated in log-step at 1e-9.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from phaseboard.analysis.run_group import function_distance, group_band, joint_pca

STEPS = [1, 10, 100, 1000]


def test_band_of_identical_runs_has_zero_width_and_equals_the_run() -> None:
    values = [3.0, 2.0, 1.5, 0.2]
    for band in ("minmax", "std"):
        g = group_band([(STEPS, values)] * 3, band=band)
        assert g.steps.tolist() == STEPS and g.n == 3 and g.band == band
        np.testing.assert_allclose(g.mean, values, atol=1e-12)
        np.testing.assert_allclose(g.lower, values, atol=1e-12)
        np.testing.assert_allclose(g.upper, values, atol=1e-12)


def test_std_band_of_two_known_series_is_mean_plus_minus_sample_std() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([3.0, 2.0, 1.0, 8.0])
    g = group_band([(STEPS, a), (STEPS, b)], band="std")
    sd = np.abs(a - b) / math.sqrt(2)  # ddof=1 of two numbers
    np.testing.assert_allclose(g.mean, (a + b) / 2, atol=1e-12)
    np.testing.assert_allclose(g.lower, (a + b) / 2 - sd, atol=1e-12)
    np.testing.assert_allclose(g.upper, (a + b) / 2 + sd, atol=1e-12)
    mm = group_band([(STEPS, a), (STEPS, b)], band="minmax")
    np.testing.assert_allclose(mm.lower, np.minimum(a, b), atol=1e-12)
    np.testing.assert_allclose(mm.upper, np.maximum(a, b), atol=1e-12)


def test_runs_on_other_steps_are_interpolated_in_log_step_on_the_overlap() -> None:
    # run b is logged at other steps and starts later: the grid is the union on [10, 1000]
    a = (STEPS, [4.0, 3.0, 2.0, 1.0])
    b_steps = [10, 99, 1000, 5000]
    b = (b_steps, [3.0 - math.log1p(s) / 10 for s in b_steps])
    g = group_band([a, b])
    assert g.steps.tolist() == [10, 99, 100, 1000]
    # a at 99: linear in log(step+1) between (10, 3.0) and (100, 2.0)
    t = (math.log1p(99) - math.log1p(10)) / (math.log1p(100) - math.log1p(10))
    a99 = 3.0 + t * (2.0 - 3.0)
    b99 = 3.0 - math.log1p(99) / 10
    assert g.lower[1] == pytest.approx(min(a99, b99), abs=1e-9)
    assert g.upper[1] == pytest.approx(max(a99, b99), abs=1e-9)
    # b at 100 (between 99 and 1000): its curve is linear in log(step+1), so exact
    assert g.mean[2] == pytest.approx((2.0 + 3.0 - math.log1p(100) / 10) / 2, abs=1e-9)


def test_runs_that_do_not_overlap_give_an_empty_band_and_bad_band_is_refused() -> None:
    g = group_band([([1, 2], [1.0, 2.0]), ([10, 20], [1.0, 2.0])])
    assert len(g.steps) == 0 and len(g.mean) == 0 and g.n == 2
    with pytest.raises(ValueError):
        group_band([(STEPS, [1, 2, 3, 4])], band="iqr")


def test_non_finite_points_are_dropped_and_max_points_thins_the_grid() -> None:
    g = group_band([(STEPS, [1.0, float("nan"), 3.0, 4.0]), (STEPS, [1.0, 2.0, 3.0, 4.0])])
    assert g.steps.tolist() == STEPS  # the NaN run is interpolated at 10
    steps = list(range(1, 1001))
    g = group_band([(steps, np.ones(1000))] * 2, max_points=50)
    assert len(g.steps) == 50 and g.steps[0] == 1 and g.steps[-1] == 1000


def test_function_distance_to_itself_is_zero_and_to_an_offset_copy_is_the_offset() -> None:
    rng = np.random.default_rng(0)
    out = rng.normal(size=(4, 30))
    steps, rms = function_distance(STEPS, out, STEPS, out)
    assert steps.tolist() == STEPS and np.all(rms == 0)
    steps, rms = function_distance(STEPS, out, STEPS, out + 0.25)
    np.testing.assert_allclose(rms, 0.25, atol=1e-12)
    # only common steps; rows matched by step, not by position
    steps, rms = function_distance([1, 10, 100], out[:3], [100, 10, 5], out[[2, 1, 0]] - 1.0)
    assert steps.tolist() == [10, 100]
    np.testing.assert_allclose(rms, 1.0, atol=1e-12)
    steps, rms = function_distance([1], out[:1], [2], out[:1])
    assert len(steps) == 0 and len(rms) == 0
    with pytest.raises(ValueError):
        function_distance(STEPS, out, STEPS, out[:, :10])


def test_joint_pca_puts_a_shifted_copy_of_a_path_on_a_parallel_line() -> None:
    rng = np.random.default_rng(1)
    t = np.log10(STEPS + [10_000])
    direction = rng.normal(size=40)
    direction /= np.linalg.norm(direction)
    shift = rng.normal(size=40)
    shift -= (shift @ direction) * direction  # orthogonal to the path
    path = t[:, None] * direction[None, :]  # (5, 40): a straight path
    steps = STEPS + [10_000]
    j = joint_pca([(steps, path), (steps, path + shift)], n_components=3)
    a, b = j.components
    assert a.shape == b.shape == (5, 3)
    # the same path shifted: the difference between the runs is the same at every step
    np.testing.assert_allclose(b - a, np.broadcast_to((b - a)[0], a.shape), atol=1e-9)
    assert np.linalg.norm((b - a)[0]) == pytest.approx(np.linalg.norm(shift), rel=1e-9)
    ev = j.explained_variance
    assert ev.sum() <= 1 + 1e-12 and np.all(ev >= 0) and ev.tolist() == sorted(ev, reverse=True)
    assert ev[2] == pytest.approx(0, abs=1e-12)  # rank 2: a line and a shift
    assert a[-1, 0] + b[-1, 0] >= a[0, 0] + b[0, 0]  # sign: the paths move towards +


def test_joint_pca_orders_rows_by_step_and_refuses_mismatched_sizes() -> None:
    out = np.arange(12, dtype=float).reshape(4, 3) ** 2
    j = joint_pca([([100, 1, 1000, 10], out[[2, 0, 3, 1]])])
    assert j.steps[0].tolist() == STEPS
    ref = joint_pca([(STEPS, out)])
    np.testing.assert_allclose(j.components[0], ref.components[0], atol=1e-12)
    with pytest.raises(ValueError):
        joint_pca([(STEPS, out), (STEPS, out[:, :2])])
    with pytest.raises(ValueError):
        joint_pca([])
