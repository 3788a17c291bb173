"""The BIF's standard error against the spread of the stacked estimate over repeated runs."""

from __future__ import annotations

import math

import torch

from phaseboard.analysis.influence import InfluenceResult, influence_matrix


def _unmixed_runs(runs: int, chains: int, draws: int) -> torch.Tensor:
    """(runs, chains, draws, 3) losses of chains that never mix: each chain sits at its own
    offset (examples 0 and 1 offset together, correlation 0.9) plus independent per-draw
    noise of the same variance, as SGLD chains at a w* that is not yet equilibrated do."""
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    offsets = torch.randn(runs, chains, 1, 3, generator=g, dtype=torch.float64) @ chol.T
    return offsets + torch.randn(runs, chains, draws, 3, generator=g, dtype=torch.float64)


def _result(draws: torch.Tensor) -> InfluenceResult:
    stacked = draws.reshape(-1, draws.shape[-1])
    return InfluenceResult(
        matrix=influence_matrix(stacked),
        covariance=False,
        draws=draws,
        chains=list(range(draws.shape[0])),
        init=torch.zeros(draws.shape[-1]),
        llc=None,  # type: ignore[arg-type]
    )


def test_jackknife_se_covers_the_stacked_matrix_where_the_chain_spread_does_not() -> None:
    runs, chains = 300, 8
    results = [_result(d) for d in _unmixed_runs(runs, chains, 20)]
    est = torch.stack([r.matrix for r in results])  # (runs, 3, 3)
    centre = est.mean(dim=0)  # the stacked estimator's expectation
    jack = torch.stack([r.matrix_se() for r in results])
    spread = torch.stack([r.chain_matrices().std(dim=0) / math.sqrt(chains) for r in results])
    t_975 = 2.365  # Student's t, 7 degrees of freedom
    off = ~torch.eye(3, dtype=torch.bool)
    covered = ((est - centre).abs() <= t_975 * jack)[:, off].double().mean()
    covered_by_spread = ((est - centre).abs() <= t_975 * spread)[:, off].double().mean()
    assert 0.90 <= covered <= 0.99, covered
    assert covered_by_spread < 0.8, covered_by_spread


def test_jackknife_se_of_a_block_and_of_one_chain() -> None:
    draws = _unmixed_runs(1, 4, 10)[0]
    res = _result(draws)
    full = res.matrix_se()
    assert full.shape == (3, 3) and torch.isfinite(full[~torch.eye(3, dtype=torch.bool)]).all()
    torch.testing.assert_close(res.matrix_se([0], [1, 2]), full[[0]][:, [1, 2]])
    res.chains = [2]
    assert torch.isnan(res.matrix_se()).all()


def test_susceptibility_jackknife_of_a_mean_is_the_chain_means_standard_error() -> None:
    """For a plain mean over equal chains the jackknife is exactly std(chain means) / sqrt(C):
    the check that ``_jackknife_se`` is the jackknife and not the spread of left-out values."""
    from phaseboard.analysis.influence.susceptibility import _jackknife_se

    g = torch.Generator().manual_seed(1)
    draws = torch.randn(6, 50, generator=g, dtype=torch.float64) + torch.arange(6.0)[:, None]
    left_out = torch.stack([torch.cat([draws[:c], draws[c + 1 :]]).mean() for c in range(6)])
    expected = draws.mean(dim=1).std() / math.sqrt(6)
    torch.testing.assert_close(_jackknife_se(left_out), expected)


def test_susceptibility_left_out_means_equal_the_stacked_chi_without_each_chain() -> None:
    """The fast jackknife (per-chain means of per-draw scalars) gives, chain by chain, the
    set's mean chi recomputed from the other chains' stacked draws; NaN positions (no
    target) are the same at every draw, as for a token task."""
    from phaseboard.analysis.influence.susceptibility import (
        _left_out_set_means,
        susceptibility_from_draws,
    )

    g = torch.Generator().manual_seed(2)
    C, D = 5, 30
    ref_g = (
        torch.randn(C, D, 6, 4, generator=g, dtype=torch.float64)
        + torch.arange(5.0)[:, None, None, None]
    )
    obs_g = (
        torch.randn(C, D, 3, 4, generator=g, dtype=torch.float64)
        + ref_g.mean((2, 3))[..., None, None]
    )
    ref_f = torch.randn(C, D, 6, 4, generator=g, dtype=torch.float64)
    obs_f = torch.randn(C, D, 3, 4, generator=g, dtype=torch.float64)
    obs_g[:, :, 1, 3] = torch.nan  # a position without a target
    obs_f[:, :, 1, 3] = torch.nan
    chains, full_chains, left = [0, 1, 2, 4], [0, 1, 2, 3, 4], [0, 1, 2, 4]
    fast = _left_out_set_means(ref_g, obs_g, ref_f, obs_f, 0.3, chains, full_chains, left)

    def stack(t: torch.Tensor, keep: list[int]) -> torch.Tensor:
        return t[keep].flatten(0, 1)

    def without(c: int) -> tuple[torch.Tensor, ...]:
        group, full = [x for x in chains if x != c], [x for x in full_chains if x != c]
        return stack(ref_g, group), stack(obs_g, group), stack(ref_f, full), stack(obs_f, full)

    slow = torch.stack([susceptibility_from_draws(*without(c), 0.3).nanmean() for c in left])
    torch.testing.assert_close(fast, slow)
