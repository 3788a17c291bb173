"""analysis.verdict on synthetic traces: each verdict fires on the trace it names."""

from __future__ import annotations

import numpy as np
import pytest

from phaseboard.analysis.verdict import (
    DIVERGED,
    IMPOSSIBLE,
    LEFT_BASIN,
    NEGATIVE,
    NOT_CONVERGED,
    OK,
    TOO_FEW,
    diverged_chains,
    judge,
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
    # A chain alone above d/2 is a diverged chain.
    assert diverged_chains(traces, INIT, NBETA, 980) == [0, 1, 2, 3]


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
