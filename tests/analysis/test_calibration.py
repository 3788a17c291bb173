"""Calibration's rule (weakest ok localization, then the lr where the estimate is flattest)
and its choice of checkpoints (spread over the trajectory, including its sharpest part)."""

from __future__ import annotations

import json
import math

import pytest

from phaseboard.analysis.llc import LLCConfig, calibrate
from phaseboard.analysis.llc.calibration import (
    CalibrationEntry,
    calibration_points,
    lr_shift,
    recommend,
)
from tests.analysis.test_llc_trust import CFG, _data, _mse, _trained


def _entry(
    lr: float, gamma: float, means: list[float], halves: list[float] | None, ok: bool = True
):  # type: ignore[no-untyped-def]
    per = [
        {"mean": m, "bias_checks": {} if halves is None else {"half_lr": h}}
        for m, h in zip(means, halves or means, strict=True)
    ]
    e = CalibrationEntry(
        lr=lr, localization=gamma, mean=means[-1], std=0.1, diverged=[], stable=ok,
        flat=ok, drift=0.0, spread=0.0, mean_trace=[], n_beta=100.0,
        verdict="ok" if ok else "localization bias", ok=ok, per_checkpoint=per,
    )  # fmt: skip
    e.lr_shift = lr_shift(e)
    return e


def test_the_weakest_ok_localization_wins_over_a_larger_lr_at_a_stronger_pull() -> None:
    entries = [
        _entry(1e-2, 100.0, [1.0, 1.0], [1.0, 1.0]),  # perfectly flat, but a strong pull
        _entry(1e-4, 1.0, [5.0, 6.0], [4.8, 5.7]),
        _entry(1e-3, 1.0, [5.2, 6.1], [5.0, 6.0]),
    ]
    best, reason = recommend(entries)
    assert best is not None and best.localization == 1.0
    assert "weakest localization" in reason


def test_at_that_localization_the_flattest_lr_wins() -> None:
    """lr_shift is the worst checkpoint's |LLC(lr/2) - LLC| / |LLC|."""
    small = _entry(1e-4, 1.0, [4.0, 5.0], [3.6, 4.6])  # 10 %, 8 %: still mixing
    mid = _entry(3e-4, 1.0, [4.4, 5.4], [4.3, 5.3])  # 2.3 %, 1.9 %: flat
    large = _entry(1e-3, 1.0, [5.0, 6.2], [4.6, 5.7])  # 8 %: discretisation bias
    assert mid.lr_shift == pytest.approx(0.1 / 4.4)
    best, reason = recommend([small, mid, large])
    assert best is mid and "moves least when lr halves" in reason


def test_not_ok_settings_are_never_recommended_and_the_reason_counts_them() -> None:
    entries = [_entry(1e-3, 1.0, [5.0], [5.0], ok=False), _entry(1e-4, 1.0, [5.0], [5.0], ok=False)]
    best, reason = recommend(entries)
    assert best is None and "2 localization bias" in reason


def _with_verdicts(e: CalibrationEntry, verdicts: list[str]) -> CalibrationEntry:
    for c, v in zip(e.per_checkpoint, verdicts, strict=True):
        c["verdict"] = v
    bad = [v for v in verdicts if v != "ok"]
    e.verdict, e.ok = (bad[0] if bad else "ok"), not bad
    return e


def test_a_checkpoint_where_every_setting_is_negative_is_left_out_of_the_rule() -> None:
    """In steep descent every setting's chains go downhill from w*: that checkpoint cannot
    rank the settings, so the rule is applied on the others, and the reason says so."""
    entries = [
        _with_verdicts(_entry(1e-4, 1.0, [-6.0, 14.0, 40.0], [0.6, 13.0, 38.0]),
                       ["negative", "ok", "ok"]),
        _with_verdicts(_entry(3e-4, 1.0, [-30.0, 39.0, 96.0], [-15.0, 22.0, 62.0]),
                       ["negative", "left the basin", "left the basin"]),
    ]  # fmt: skip
    best, reason = recommend(entries)
    assert best is entries[0]
    assert "the 1st of 3 calibrated checkpoints left out" in reason
    assert "2 calibrated checkpoint(s)" in reason  # the lr / 2 shift over the other two
    # Where one setting is not negative there, the checkpoint counts.
    _with_verdicts(entries[1], ["ok", "left the basin", "left the basin"])
    best, reason = recommend(entries)
    assert best is None and "left out" not in reason
    # Negative everywhere: nothing is left to rank on, nothing is left out.
    for e in entries:
        _with_verdicts(e, ["negative"] * 3)
    best, reason = recommend(entries)
    assert best is None and "left out" not in reason


def test_without_step_size_checks_the_smallest_ok_lr_is_taken() -> None:
    entries = [_entry(1e-3, 1.0, [5.0], None), _entry(1e-4, 1.0, [4.0], None)]
    assert math.isnan(entries[0].lr_shift)
    best, _ = recommend(entries)
    assert best is not None and best.lr == 1e-4


def test_calibrate_records_each_settings_checks_and_lr_shift() -> None:
    cfg = LLCConfig(**{**CFG, "num_draws": 40})
    rep = calibrate(_trained(), _mse, _data(), cfg, lrs=(1e-4, 3e-4), localizations=(10.0, 100.0))
    for e in rep.entries:
        c = e.per_checkpoint[0]
        assert set(c["bias_checks"]) == {"half_lr", "half_localization"}
        assert len(c["per_chain"]) == cfg.num_chains
        assert e.lr_shift == pytest.approx(abs(c["bias_checks"]["half_lr"] - c["mean"]) / c["mean"])
    # common random numbers: lr 3e-4's lr / 2 chains are not lr 1e-4's, but each setting's
    # estimate is the same as estimate_llc's at that setting
    assert "lr/2" in rep.summary()
    json.dumps(rep.to_dict(), allow_nan=False)


# --- calibration checkpoints --------------------------------------------------------------

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
# flat, then a cliff between steps 64 and 128 (the sharpest part), then slow decline
LOSSES = [3.4, 3.4, 3.39, 3.37, 3.3, 3.1, 2.9, 2.7, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1]


def test_calibration_points_include_the_sharpest_part_and_the_end() -> None:
    picks = calibration_points(STEPS, LOSSES, count=3)
    # 32: the first step whose loss has made 10 % of the run's fall (3.4 -> 0.1, 0.33)
    assert [STEPS[i] for i in picks] == [32, 128, 4096]


def test_calibration_points_spread_in_log_step_and_never_take_the_initial_weights() -> None:
    picks = [STEPS[i] for i in calibration_points(STEPS, LOSSES, count=5)]
    assert 0 not in picks and picks == sorted(picks) and len(set(picks)) == 5
    assert 128 in picks and picks[-1] == 4096
    # without losses: evenly in log-step from the first non-zero step
    assert [STEPS[i] for i in calibration_points(STEPS, None, count=3)] == [1, 64, 4096]


def test_calibration_points_with_few_checkpoints_or_unknown_losses() -> None:
    assert calibration_points([0], None) == [0]  # only the initial weights: that or nothing
    assert calibration_points([0, 10, 20], [1.0, 0.5, 0.4], count=3) == [1, 2]
    assert calibration_points([], None) == []
    # unknown losses are skipped; the first known one (3.0 at step 10) starts the fall
    losses = [None, float("nan"), 3.0, 2.0, 1.0]
    assert calibration_points([0, 1, 10, 100, 1000], losses, count=3) == [3, 4]
