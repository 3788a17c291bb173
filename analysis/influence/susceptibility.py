"""Susceptibilities: how each weight group responds to a shift of the data distribution.

Following Baker et al. 2025 ("Structural Inference", arXiv 2504.18274, appendix C.4) as
devinterp 2.0.1 computes it (``slt/susceptibilities.py``): for a weight group C, an
observable example set x (a data subset; per token where the task has tokens) and the
reference set (examples from the training distribution, devinterp's "sampling task"),

    chi_{C,x} = E_C[phi (L - l_x)] - E_C[phi] * E_full[L - l_x],   phi = L - L(w*),

with L the mean loss on the reference set and l_x the loss on x at a posterior draw, E_C
the expectation under the posterior restricted to C (only C's weights move, the rest at
w*) and E_full under the full posterior. It is minus the covariance of the group's
observable phi with the loss shift l_x - L: negative where moving C's weights to lower
the loss on the training distribution lowers the loss on x more than average (C "serves"
x), positive where the two compete. No n_beta factor (devinterp's convention).

Every group's restricted posterior and the full one are sampled in one vectorised run
(rows checkpoint x (full + groups) x chain, paired minibatches and noise), with every row
evaluating the per-example (per-token) losses of the reference and observable sets at
each draw; the run's LLCs per group come with it. Only chains whose weights or losses
left the finite numbers are left out (see ``analysis.influence.bif``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..llc import LLCConfig, LLCResult, LossFn, ParamMask, Progress, checkpoint_tensors
from ..llc.sampler import _SamplerOutput
from ..llc.summary import summarise
from ._sampling import PerExampleLoss, at_w_star, finite_chains, sample_observed

__all__ = [
    "SusceptibilityResult",
    "susceptibilities",
    "susceptibilities_many",
    "susceptibility_from_draws",
]


def _mean_over_examples(losses: Tensor) -> Tensor:
    """(N, n[, T]) -> (N,): the set's mean loss per draw (NaN: a position without target)."""
    return losses.flatten(1).nanmean(dim=1)


def susceptibility_from_draws(
    ref_group: Tensor, probe_group: Tensor, ref_full: Tensor, probe_full: Tensor, ref_init: float
) -> Tensor:
    """chi per observable example (token) from draws, float64.

    ``ref_group`` (N, n_ref[, T]) and ``probe_group`` (N, n[, T]): the reference and
    observable sets' losses at N draws of the group's restricted posterior; ``ref_full``
    and ``probe_full`` (M, ...) the same at M draws of the full posterior; ``ref_init``
    L(w*) on the reference set. Returns (n[, T]) (NaN where a position has no target).
    """
    L = _mean_over_examples(ref_group.double())  # (N,)
    lx = probe_group.double().flatten(1)  # (N, m)
    phi = L - ref_init
    shift_full = _mean_over_examples(ref_full.double()).mean() - probe_full.double().flatten(
        1
    ).mean(0)  # E_full[L - l_x], (m,)
    chi = (phi[:, None] * (L[:, None] - lx)).mean(0) - phi.mean() * shift_full
    return chi.view(probe_group.shape[1:])


@dataclass
class SusceptibilityResult:
    """Susceptibilities at one checkpoint: per weight group and observable set."""

    groups: list[str]
    probes: list[str]
    matrix: Tensor  # (G, P) float64: chi averaged over each set's examples (and tokens)
    matrix_se: Tensor  # (G, P): standard error, a jackknife over chains (NaN with < 2 chains)
    per_example: dict[str, Tensor]  # set -> (G, n) per example, or (G, n, T) per token
    token_level: bool  # per_example holds per-token values
    llc: dict[str, LLCResult]  # each group's restricted LLC from the same run
    full_llc: LLCResult  # the full model's LLC from the same run
    reference_init: float  # L(w*) on the reference set

    def per_sequence(self, probe: str) -> Tensor:
        """(G, n): per example, token values averaged over the example's targets."""
        chi = self.per_example[probe]
        return chi.flatten(2).nanmean(2) if chi.dim() > 2 else chi


def susceptibilities(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    weight_groups: Mapping[str, ParamMask | None],
    observables: Mapping[str, Any],
    reference: Any,
    per_example_loss: PerExampleLoss,
    observe_every: int = 1,
    reference_init: float | None = None,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> SusceptibilityResult:
    """Susceptibility of every weight group to every observable set at ``model``'s weights.

    ``loss_fn`` and ``batches`` drive SGLD as in ``estimate_llc`` (the full posterior and
    each group's restricted one, all in one vectorised run). ``weight_groups``: name ->
    ``ParamMask`` as in ``estimate_llc_restricted`` (the full-model run is always added).
    ``observables``: name -> a batch of examples whose distribution shift is probed (the
    task's data subsets, the test split). ``reference``: a batch from the training
    distribution (devinterp's sampling task; L is its mean loss). ``per_example_loss
    (model, batch)`` -> (n,) per example, or (n, T) per token (NaN where no target): then
    the result is per token (``token_level``). ``observe_every``: the example sets are
    evaluated at every k-th draw only (as in ``bayesian_influence``). The model is only read.

    ``reference_init``: the L(w*) that phi = L - L(w*) subtracts. None (the default) takes
    the reference set's own loss at the checkpoint, so phi is exactly the rise of L. devinterp
    subtracts the mean loss of 32 training minibatches at w* instead; the two differ by the
    reference set's sampling error, which shifts chi by that difference times
    E_C[L - l_x] - E_full[L - l_x] (a shift that can outweigh chi itself on a small
    reference set). Pass a number to reproduce another convention.
    """
    return susceptibilities_many(
        [model], loss_fn, batches, config, weight_groups=weight_groups,
        observables=observables, reference=reference, per_example_loss=per_example_loss,
        observe_every=observe_every, reference_init=reference_init, progress=progress,
        chance_loss=chance_loss,
    )[0]  # fmt: skip


def susceptibilities_many(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    weight_groups: Mapping[str, ParamMask | None],
    observables: Mapping[str, Any],
    reference: Any,
    per_example_loss: PerExampleLoss,
    model: nn.Module | None = None,
    observe_every: int = 1,
    reference_init: float | Sequence[float] | None = None,
    max_rows: int | None = None,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> list[SusceptibilityResult]:
    """``susceptibilities`` at several checkpoints of one architecture: rows checkpoint x
    (full + groups) x chain in one vmap-ed run, chunked to the memory budget like
    ``estimate_llc_restricted_many`` (with only state_dicts pass ``model``). Each
    checkpoint's result equals its own run alone. ``reference_init``: as in
    ``susceptibilities``, one number per checkpoint (or one for all)."""
    if not weight_groups:
        raise ValueError("weight_groups is empty: susceptibilities are per weight group")
    if not observables:
        raise ValueError("observables is empty: name at least one example set to probe")
    if not models_or_state_dicts:
        return []
    groups, probes = list(weight_groups), list(observables)
    template, state_dicts = checkpoint_tensors(models_or_state_dicts, model)
    inits: list[float] | None = None
    if reference_init is not None:
        if isinstance(reference_init, int | float):
            inits = [float(reference_init)] * len(state_dicts)
        else:
            inits = [float(x) for x in reference_init]
            if len(inits) != len(state_dicts):
                raise ValueError(
                    f"reference_init: {len(inits)} values for {len(state_dicts)} checkpoints"
                )
    masks = [None, *(weight_groups[g] for g in groups)]  # row group 0: the full model
    results: list[SusceptibilityResult] = []
    for chunk, out in sample_observed(
        state_dicts, loss_fn, batches, config,
        example_sets=[reference, *(observables[p] for p in probes)],
        per_example_loss=per_example_loss, group_masks=masks, model=template,
        max_rows=max_rows, progress=progress, observe_every=observe_every,
    ):  # fmt: skip
        share = out.elapsed_s / (len(chunk) * len(masks))
        for k, state in enumerate(chunk):
            llcs = [summarise(out, k, g, config, share, chance_loss) for g in range(len(masks))]
            index = len(results)
            if inits is not None:
                ref_init = inits[index]
            else:
                at = at_w_star(template, state, per_example_loss, reference, config)
                ref_init = float(at.flatten().nanmean())
            results.append(_at_checkpoint(out, k, llcs, groups, probes, ref_init))
    return results


def _left_out_set_means(
    ref_group: Tensor,
    probe_group: Tensor,
    ref_full: Tensor,
    probe_full: Tensor,
    ref_init: float,
    chains: list[int],
    full_chains: list[int],
    left: list[int],
) -> Tensor:
    """The set's mean chi (``susceptibility_from_draws(...).nanmean()`` over stacked chains)
    with each chain of ``left`` left out in turn, from per-chain means of per-draw scalars.

    Averaged over a set's examples (its positions with a target are the same at every
    draw), chi is mean(phi (L - lbar)) - mean(phi) (mean(L_full) - mean(lbar_full)), with
    lbar a draw's mean loss over the set: every term is a mean over draws, and every chain
    has the same number of draws, so a left-out mean is a mean of the other chains' means.
    Arguments as ``susceptibility_from_draws`` with a leading chain axis (C, D, ...)."""

    def per_draw(losses: Tensor) -> Tensor:  # (C, D, n[, T]) -> (C, D)
        return losses.double().flatten(2).nanmean(dim=2)

    L, lbar = per_draw(ref_group), per_draw(probe_group)
    phi = L - ref_init
    group = torch.stack([(phi * (L - lbar)).mean(1), phi.mean(1)], dim=1)  # (C, 2)
    full = (per_draw(ref_full) - per_draw(probe_full)).mean(1)  # (C,)

    def without(values: Tensor, members: list[int], c: int) -> Tensor:
        kept = [x for x in members if x != c]
        return values[kept].mean(0)

    out = []
    for c in left:
        a, phi_mean = without(group, chains, c)
        out.append(a - phi_mean * without(full, full_chains, c))
    return torch.stack(out)


def _jackknife_se(left_out: Tensor) -> Tensor:
    """Standard error of a value computed from every chain's draws stacked, from its values
    with each chain left out in turn. The stack carries the chains' offsets from one another
    (chains that do not mix within a run), which each chain's own value never sees, so the
    spread of per-chain values understates the error."""
    n = left_out.numel()
    return ((n - 1) / n * ((left_out - left_out.mean()) ** 2).sum()).sqrt()


def _at_checkpoint(
    out: _SamplerOutput,
    k: int,
    llcs: list[LLCResult],
    groups: list[str],
    probes: list[str],
    ref_init: float,
) -> SusceptibilityResult:
    """One checkpoint's result from the run's observed draws (K, 1 + G, C, D, n, ...)."""
    observed = out.observed
    ref = observed[0][k]  # (1 + G, C, D, n_ref[, T])

    def stacked(t: Tensor, chains: list[int]) -> Tensor:
        return t[chains].flatten(0, 1)  # (C_used * D, ...)

    def good(g: int) -> list[int]:  # row group g's chains with finite weights and losses
        draws = torch.cat([o[k, g].flatten(2) for o in observed], dim=2)
        return finite_chains(draws, out.finite[k, g])

    full_good = good(0)
    per_example: dict[str, Tensor] = {}
    matrix = torch.full((len(groups), len(probes)), torch.nan, dtype=torch.float64)
    se = torch.full_like(matrix, torch.nan)
    for p, name in enumerate(probes):
        obs = observed[p + 1][k]  # (1 + G, C, D, n[, T])
        rows = []
        for g in range(len(groups)):
            chains = good(g + 1)
            if not chains or not full_good:
                rows.append(torch.full(obs.shape[3:], torch.nan, dtype=torch.float64))
                continue
            chi = susceptibility_from_draws(
                stacked(ref[g + 1], chains), stacked(obs[g + 1], chains),
                stacked(ref[0], full_good), stacked(obs[0], full_good), ref_init,
            )  # fmt: skip
            rows.append(chi)
            matrix[g, p] = chi.nanmean()
            both = [c for c in chains if c in full_good]
            if len(both) > 1:  # jackknife over chains: see ``_jackknife_se``
                left_out = _left_out_set_means(
                    ref[g + 1], obs[g + 1], ref[0], obs[0], ref_init, chains, full_good, both
                )
                se[g, p] = _jackknife_se(left_out)
        per_example[name] = torch.stack(rows)
    return SusceptibilityResult(
        groups=list(groups),
        probes=list(probes),
        matrix=matrix,
        matrix_se=se,
        per_example=per_example,
        token_level=observed[1].dim() == 6,  # (K, G, C, D, n, T)
        llc={g: llcs[i + 1] for i, g in enumerate(groups)},
        full_llc=llcs[0],
        reference_init=ref_init,
    )
