"""The Bayesian influence function (BIF): how examples' losses co-vary under the posterior.

Under the localised, tempered posterior at a checkpoint w* (the distribution the LLC's SGLD
chains sample), the BIF of example j on example i is the correlation (or covariance) of their
losses over posterior draws: Cov(l_i(w), l_j(w)) for w ~ p(w) ∝ exp(-n beta L(w) - gamma/2
|w - w*|^2). Positive: a direction in weight space that lowers one loss lowers the other
("j helps i"); negative: they compete. (Kreer et al., "Bayesian Influence Functions for
Hessian-Free Data Attribution"; devinterp 2.0.1 ``slt/bif.py``.)

Estimated from the draws of the same vectorised SGLD run an LLC estimate makes: at every
draw step every chain also evaluates ``per_example_loss`` on the examples, and the matrix is
taken over all chains' draws stacked (devinterp's ``reduce_chain_dimension_method="stack"``).
Chains whose weights or losses left the finite numbers are left out (only those: the LLC
verdict's other divergence tests, such as a chain LLC above d/2, would cut the posterior's
tail and bias the covariance low). The standard error of the stacked matrix is a
jackknife over chains (``matrix_se``): chains that have not mixed sit at different losses,
and that between-chain offset enters the stacked covariance, which each chain's own matrix
(``chain_matrices``) never sees, so the chain matrices' spread understates the error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..llc import LLCConfig, LLCResult, LossFn, ParamMask, Progress, checkpoint_tensors
from ..llc.summary import summarise
from ._sampling import PerExampleLoss, at_w_star, finite_chains, sample_observed

__all__ = [
    "InfluenceResult",
    "bayesian_influence",
    "bayesian_influence_many",
    "influence_matrix",
    "token_influence",
]


def influence_matrix(
    draws: Tensor,
    *,
    covariance: bool = False,
    rows: Sequence[int] | slice | None = None,
    cols: Sequence[int] | slice | None = None,
) -> Tensor:
    """(r, c) correlation (default) or covariance over the draws of per-example losses.

    ``draws`` is (N, n): N posterior draws of n examples' losses (per-token losses
    (N, n, T) are averaged over their targets first, NaN meaning no target). ``rows`` and
    ``cols`` pick a block (e.g. probe examples x training examples). Float64. An example
    whose loss never moves has no correlation: NaN in its rows and columns.
    """
    x = _sequence_level(draws).double()
    if x.shape[0] < 2:
        raise ValueError(f"need at least two draws for a covariance, got {x.shape[0]}")
    x = x - x.mean(dim=0)
    a = x if rows is None else x[:, rows]
    b = x if cols is None else x[:, cols]
    cov = a.T @ b / (x.shape[0] - 1)
    if covariance:
        return cov
    sa = a.square().sum(0).div(x.shape[0] - 1).sqrt()
    sb = b.square().sum(0).div(x.shape[0] - 1).sqrt()
    denom = sa[:, None] * sb[None, :]
    return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.nan)


def token_influence(draws: Tensor, *, covariance: bool = False) -> Tensor:
    """Token-wise BIF, (n, n, T, T): entry [i, j, s, t] relates token s of example i to
    token t of example j (devinterp's ``correlation_method="token"``); ``draws`` (N, n, T)."""
    if draws.dim() != 3:
        raise ValueError(f"token-wise BIF needs (draws, n, T) losses, got {tuple(draws.shape)}")
    N, n, T = draws.shape
    flat = influence_matrix(draws.reshape(N, n * T), covariance=covariance)
    return flat.view(n, T, n, T).permute(0, 2, 1, 3)


def _sequence_level(draws: Tensor) -> Tensor:
    """(N, n, T...) per-token losses -> (N, n) per-example means over targets."""
    if draws.dim() <= 2:
        return draws
    return draws.flatten(2).nanmean(dim=2)


@dataclass
class InfluenceResult:
    """The BIF at one checkpoint, with the draws it came from and the run's LLC."""

    matrix: Tensor  # (n, n) float64: correlation (default) or covariance
    covariance: bool
    draws: Tensor  # (C, D', n[, T]) per-example (per-token) losses at the observed draws
    chains: list[int]  # chains the matrix uses (weights and losses finite throughout)
    init: Tensor  # (n[, T]) the losses at w*
    llc: LLCResult  # the LLC estimate of the same SGLD run
    token_matrix: Tensor | None = None  # (n, n, T, T) with token_level=True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stacked(self) -> Tensor:
        """(N, n[, T]): the used chains' draws stacked."""
        used = self.draws[self.chains]
        return used.reshape(-1, *used.shape[2:])

    def block(
        self, rows: Sequence[int] | slice | None = None, cols: Sequence[int] | slice | None = None
    ) -> Tensor:
        """A block of ``matrix`` recomputed from the draws (same numbers, less memory)."""
        return influence_matrix(self.stacked, covariance=self.covariance, rows=rows, cols=cols)

    def matrix_se(
        self, rows: Sequence[int] | slice | None = None, cols: Sequence[int] | slice | None = None
    ) -> Tensor:
        """Standard error of ``block(rows, cols)``: the jackknife over chains (each used chain
        left out of the stack in turn), NaN with fewer than two chains. z-scores against it
        follow Student's t with (chains - 1) degrees of freedom."""
        used = self.draws[self.chains]
        c = len(self.chains)
        if c < 2:
            return torch.full_like(self.block(rows, cols), torch.nan)
        loo = torch.stack(
            [
                influence_matrix(
                    torch.cat([used[:k], used[k + 1 :]]).reshape(-1, *used.shape[2:]),
                    covariance=self.covariance,
                    rows=rows,
                    cols=cols,
                )
                for k in range(c)
            ]
        )
        return loo.std(dim=0, correction=0) * (c - 1) ** 0.5

    def chain_matrices(
        self, rows: Sequence[int] | slice | None = None, cols: Sequence[int] | slice | None = None
    ) -> Tensor:
        """(C_used, r, c): each used chain's own matrix (within-chain covariation only; for
        the stacked matrix's error use ``matrix_se``)."""
        return torch.stack(
            [
                influence_matrix(self.draws[c], covariance=self.covariance, rows=rows, cols=cols)
                for c in self.chains
            ]
        )


def bayesian_influence(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    examples: Any,
    config: LLCConfig,
    *,
    per_example_loss: PerExampleLoss,
    covariance: bool = False,
    param_mask: ParamMask | None = None,
    token_level: bool = False,
    observe_every: int = 1,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> InfluenceResult:
    """The BIF over ``examples`` at ``model``'s weights: ``res.matrix`` is (n, n).

    ``loss_fn`` and ``batches`` drive SGLD exactly as in ``estimate_llc`` (and
    ``res.llc`` is that estimate); at every draw step every chain evaluates
    ``per_example_loss(model, examples)`` -> (n,) losses, or (n, T) per-token losses (NaN
    where a position has no target), which are averaged per example for ``matrix``; with
    ``token_level=True`` ``res.token_matrix`` is the token-wise (n, n, T, T) BIF as well.
    ``param_mask`` restricts the posterior to some weights as in ``estimate_llc``.
    ``observe_every`` evaluates the examples at every k-th draw only: draws a few SGLD steps
    apart are strongly correlated, so thinning costs little precision and saves forward
    passes (the LLC still uses every draw). The model is only read.
    """
    return bayesian_influence_many(
        [model], loss_fn, batches, examples, config, per_example_loss=per_example_loss,
        covariance=covariance, param_mask=param_mask, token_level=token_level,
        observe_every=observe_every, progress=progress, chance_loss=chance_loss,
    )[0]  # fmt: skip


def bayesian_influence_many(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    loss_fn: LossFn,
    batches: Iterable[Any],
    examples: Any,
    config: LLCConfig,
    *,
    per_example_loss: PerExampleLoss,
    model: nn.Module | None = None,
    covariance: bool = False,
    param_mask: ParamMask | None = None,
    token_level: bool = False,
    observe_every: int = 1,
    max_rows: int | None = None,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> list[InfluenceResult]:
    """``bayesian_influence`` at several checkpoints of one architecture, checkpoints x
    chains in one vmap-ed run (chunked like ``estimate_llc_many``; with only state_dicts
    pass ``model``, a template). Each checkpoint's result equals its own run alone."""
    if not models_or_state_dicts:
        return []
    template, state_dicts = checkpoint_tensors(models_or_state_dicts, model)
    results: list[InfluenceResult] = []
    for chunk, out in sample_observed(
        state_dicts, loss_fn, batches, config, example_sets=[examples],
        per_example_loss=per_example_loss, group_masks=[param_mask], model=template,
        max_rows=max_rows, progress=progress, observe_every=observe_every,
    ):  # fmt: skip
        for k, state in enumerate(chunk):
            llc = summarise(out, k, 0, config, out.elapsed_s / len(chunk), chance_loss)
            draws = out.observed[0][k, 0]  # (C, D, n[, T])
            chains = finite_chains(draws, out.finite[k, 0])
            res = InfluenceResult(
                matrix=torch.empty(0),
                covariance=covariance,
                draws=draws,
                chains=chains,
                init=at_w_star(template, state, per_example_loss, examples, config),
                llc=llc,
            )
            if len(chains) * draws.shape[1] < 2:
                res.matrix = torch.full((draws.shape[2],) * 2, torch.nan, dtype=torch.float64)
            else:
                res.matrix = influence_matrix(res.stacked, covariance=covariance)
                if token_level and draws.dim() == 4:
                    res.token_matrix = token_influence(res.stacked, covariance=covariance)
            results.append(res)
    return results
