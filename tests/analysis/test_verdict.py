"""analysis.verdict on synthetic traces: each verdict fires on the trace it names."""

from __future__ import annotations

import numpy as np
import pytest

from phaseboard.analysis.verdict import (
    ADVICE,
    DIVERGED,
    IMPOSSIBLE,
    LEFT_BASIN,
    LOCALIZATION_BIAS,
    NEGATIVE,
    NOT_CONVERGED,
    OK,
    SHIFT_ALPHA,
    STEP_SIZE_BIAS,
    TOO_FEW,
    VERDICTS,
    ChanceLoss,
    diverged_chains,
    judge,
    shift_test,
    trend_test,
)

INIT, NBETA, D = 1.0, 50.0, 1000  # L(w*), n_beta, free parameters (bound d/2 = 500)


def _ar1(chains: int, draws: int, rho: float, sigma: float, seed: int) -> np.ndarray:
    """Stationary AR(1) noise: SGLD loss traces are autocorrelated like this."""
    rng = np.random.default_rng(seed)
    x = np.zeros((chains, draws))
    x[:, 0] = rng.normal(0, sigma, chains)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + rng.normal(0, sigma * np.sqrt(1 - rho**2), chains)
    return x


def _verdict(traces: np.ndarray, chance: float | None = None) -> str:
    div = diverged_chains(traces, INIT, NBETA, D, chance_loss=chance)
    return judge(traces, INIT, NBETA, D, div, chance_loss=chance).name


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_flat_trace_is_ok_even_when_autocorrelated(seed: int, rho: float) -> None:
    traces = INIT + 0.1 + _ar1(4, 200, rho, 0.05, seed)  # LLC ~ 5, flat
    assert _verdict(traces, chance=3.0) == OK


def test_drifting_trace_is_not_converged() -> None:
    drift = np.linspace(0, 0.5, 200)  # still climbing by 10 noise-sigmas at the end
    traces = INIT + 0.1 + drift + _ar1(4, 200, 0.5, 0.05, 0)
    verdict = judge(traces, INIT, NBETA, D, [])
    assert verdict.name == NOT_CONVERGED
    assert "drifts" in verdict.detail


def test_trend_test_slope_statistic_separates_flat_from_drift() -> None:
    flat = trend_test(_ar1(1, 400, 0.8, 1.0, 3)[0])
    steep = trend_test(np.linspace(0, 5, 400) + _ar1(1, 400, 0.8, 1.0, 3)[0])
    assert flat["t"] < 4 < steep["t"]


def test_exploding_chain_is_diverged_and_counted() -> None:
    traces = INIT + 0.1 + _ar1(4, 100, 0.5, 0.05, 1)
    traces[2] = INIT * np.exp(np.linspace(0, 12, 100))  # blows up, finite
    traces[3, 50:] = np.inf
    div = diverged_chains(traces, INIT, NBETA, D)
    assert div == [2, 3]
    verdict = judge(traces, INIT, NBETA, D, div)
    assert verdict.name == DIVERGED and verdict.detail.startswith("2 of 4")


def test_chain_above_twice_chance_is_diverged_even_if_its_llc_is_small() -> None:
    traces = INIT + 0.01 + _ar1(4, 100, 0.0, 0.001, 2)
    traces[0, 10] = 7.0  # one spike above 2 x chance (3.0)
    assert diverged_chains(traces, INIT, NBETA, 10**9, chance_loss=3.0) == [0]


def test_negative_estimate_is_negative() -> None:
    traces = INIT - 0.2 + _ar1(4, 100, 0.5, 0.02, 0)
    assert _verdict(traces) == NEGATIVE


def test_estimate_above_half_the_free_parameters_is_impossible() -> None:
    # Every chain at ~495, just under its own d/2 check at d = 1000 ...
    traces = INIT + 9.9 + _ar1(4, 100, 0.0, 0.001, 0)  # per chain ~ 495
    assert diverged_chains(traces, INIT, NBETA, D) == []
    # ... but the mean above d/2 = 490 for d = 980: impossible.
    verdict = judge(traces, INIT, NBETA, 980, [])
    assert verdict.name == IMPOSSIBLE
    # A chain alone above twice d/2 is a diverged chain; between d/2 and d it is chain noise
    # (one chain's estimate of a regular model's d/2 scatters around it).
    assert diverged_chains(traces, INIT, NBETA, 980) == []
    assert diverged_chains(traces, INIT, NBETA, 490) == [0, 1, 2, 3]


def test_chains_at_chance_level_left_the_basin() -> None:
    chance = np.log(31)  # the demo's modular addition
    traces = 2.9 + _ar1(4, 100, 0.5, 0.05, 0)  # mean sampled loss near chance, L(w*) = 0.3
    verdict = judge(traces, 0.3, 100.0, 10**6, [], chance_loss=chance)
    assert verdict.name == LEFT_BASIN
    assert "chance" in verdict.detail


def test_too_few_draws_or_one_chain() -> None:
    assert _verdict(INIT + 0.1 + _ar1(4, 10, 0.0, 0.01, 0)) == TOO_FEW
    assert _verdict(INIT + 0.1 + _ar1(1, 200, 0.0, 0.01, 0)) == TOO_FEW


def test_verdict_dict_is_json_clean() -> None:
    import json

    v = judge(INIT + 0.1 + _ar1(4, 100, 0.0, 0.01, 0), INIT, NBETA, D, [])
    d = v.to_dict()
    assert d["verdict"] == OK and d["verdict_advice"]
    json.dumps(d, allow_nan=False)


# --- bias checks: paired shifts between the estimate's chains and its check chains -------


def _flat(
    chains: int, draws: int, level: float, seed: int, sigma: float = 0.02, rho: float = 0.5
) -> np.ndarray:
    """Stationary traces whose per-chain LLC is ~ NBETA x ``level``, chain offsets included
    (chains differ by more than the traces' noise, as real chains do)."""
    rng = np.random.default_rng(seed + 1000)
    offsets = rng.normal(0, 0.01, (chains, 1))
    return INIT + level + offsets + _ar1(chains, draws, rho, sigma, seed)


def _llcs(traces: np.ndarray) -> np.ndarray:
    return NBETA * (traces.mean(axis=1) - INIT)


def test_half_step_chains_that_agree_leave_the_verdict_ok() -> None:
    main = _flat(8, 200, 0.1, 0)
    # the lr / 2 chains: the same chains (paired) plus a 2 % shift, well under 10 %
    half = _llcs(main) * 1.02 + np.random.default_rng(1).normal(0, 0.05, 8)
    verdict = judge(main, INIT, NBETA, D, [], half_lr=half, half_localization=_llcs(main))
    assert verdict.name == OK, verdict.detail
    assert verdict.checks["half_lr_shifted"] is False and verdict.checks["half_lr_n"] == 8


def test_half_step_chains_that_disagree_flag_step_size_bias() -> None:
    main = _flat(8, 200, 0.1, 0)
    half = _llcs(main) * 0.7 + np.random.default_rng(1).normal(0, 0.05, 8)  # 30 % lower
    verdict = judge(main, INIT, NBETA, D, [], half_lr=half)
    assert verdict.name == STEP_SIZE_BIAS
    assert "lr / 2" in verdict.detail and "30%" in verdict.detail
    assert ADVICE[STEP_SIZE_BIAS]


def test_half_localization_chains_that_disagree_flag_localization_bias() -> None:
    main = _flat(8, 200, 0.1, 0)
    half = _llcs(main) * 1.5  # a strong pull halved: the estimate grows
    verdict = judge(main, INIT, NBETA, D, [], half_lr=_llcs(main), half_localization=half)
    assert verdict.name == LOCALIZATION_BIAS
    assert verdict.checks["half_localization_mean"] == pytest.approx(1.5 * _llcs(main).mean())


def test_a_large_shift_within_the_chains_spread_is_not_flagged() -> None:
    """Significant AND large: a 20 % shift whose paired differences scatter by more than
    itself is noise at this many chains."""
    main = _flat(4, 200, 0.1, 0)
    base = _llcs(main)
    half = base + base.mean() * np.array([0.9, -0.6, 0.8, -0.3])  # mean shift +20 %
    verdict = judge(main, INIT, NBETA, D, [], half_lr=half)
    assert verdict.name == OK
    assert verdict.checks["half_lr_t"] < shift_test(base, half, base.mean())["t_crit"]


def test_diverged_check_chains_are_dropped_from_the_pairs() -> None:
    main = _flat(4, 200, 0.1, 0)
    half = _llcs(main) * 0.5
    half[[1, 3]] = np.nan  # those check chains diverged
    verdict = judge(main, INIT, NBETA, D, [], half_localization=half)
    assert verdict.checks["half_localization_n"] == 2
    half[[0, 2]] = np.nan  # none left: the check cannot speak
    verdict = judge(main, INIT, NBETA, D, [], half_localization=half)
    assert verdict.name == OK and verdict.checks["half_localization_n"] == 0


def test_first_and_second_half_of_the_draws_disagreeing_is_not_converged() -> None:
    """A burn-in the trend test misses: a rise over the first half, flat after it (the
    second half alone has no slope)."""
    rise = np.minimum(np.linspace(0, 2, 200), 1.0) * 0.1  # reaches its level at draw 100
    traces = INIT + 0.02 + rise + _ar1(8, 200, 0.5, 0.01, 0)
    verdict = judge(traces, INIT, NBETA, D, [])
    assert verdict.name == NOT_CONVERGED
    assert "first half" in verdict.detail and verdict.checks["halves_shifted"] is True


def test_shift_test_false_alarms_stay_near_its_level() -> None:
    """Tolerance: iid pairs with no shift are flagged at most at the test's level (1 %)
    plus binomial noise: <= 3 % of 400 draws (measured 2; the 10 % size gate only removes
    flags)."""
    rng = np.random.default_rng(0)
    flags = sum(
        shift_test(base, base + rng.normal(0, 1.0, 4), 1.0)["shifted"]
        for base in rng.normal(5.0, 1.0, (400, 4))
    )
    assert flags <= 12, flags
    assert SHIFT_ALPHA == 0.01


def test_stationary_traces_rarely_fail_the_burn_in_halves() -> None:
    """Tolerance: of 300 stationary, strongly autocorrelated estimates (AR(1) rho 0.9, 4
    chains, 200 draws) the halves check flags at most 3 % (its level is 1 %; measured 3
    of 300)."""
    verdicts = [judge(_flat(4, 200, 0.1, seed, rho=0.9), INIT, NBETA, D, []) for seed in range(300)]
    flagged = sum(v.checks.get("halves_shifted", False) for v in verdicts)
    assert flagged <= 9, flagged


def test_left_the_basin_names_where_the_chance_level_comes_from() -> None:
    chance = ChanceLoss(np.log(500), "ln(vocab 500)")
    traces = 5.0 + _ar1(4, 100, 0.5, 0.05, 0)
    verdict = judge(traces, 0.3, 100.0, 10**6, [], chance_loss=chance)
    assert verdict.name == LEFT_BASIN and "(ln(vocab 500))" in verdict.detail
    assert verdict.checks["chance_loss_source"] == "ln(vocab 500)"
    assert isinstance(verdict.checks["chance_loss"], float)


def test_new_verdicts_are_listed_with_advice() -> None:
    for name in (STEP_SIZE_BIAS, LOCALIZATION_BIAS):
        assert name in VERDICTS and ADVICE[name]
