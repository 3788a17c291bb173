"""From a sampler run to ``LLCResult``s: per-chain values, the verdict and its bias checks.

Every estimate can carry its own bias checks: the same call (``_run_sgld``) runs, beside
the estimate's group of chains, a group at half the step size and one at half the
localization (``companions``). They share the estimate's minibatches and noise (chain c of
every group draws the same ones), so chain c at lr / 2 is a paired comparison with chain c
at lr, far less noisy than two independent estimates. ``summarise`` turns one group of
one checkpoint into an ``LLCResult`` whose verdict (``analysis.verdict.judge``) includes
those comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..verdict import diverged_chains, judge
from .config import LLCConfig
from .result import LLCResult, _json_float, chain_summary

if TYPE_CHECKING:
    from .sampler import _SamplerOutput


@dataclass(frozen=True)
class Companions:
    """Where a setting's check groups sit in a sampler run's groups (None: not run)."""

    half_lr: int | None = None
    half_localization: int | None = None


def companion_settings(
    config: LLCConfig, lr: float, localization: float
) -> list[tuple[str, float, float]]:
    """The check groups one setting gets: ``[(name, lr, localization)]``.

    None with ``config.bias_checks`` off or a single chain (nothing to pair); no
    half-localization check at localization 0 (half of nothing is the same setting).
    """
    if not config.bias_checks or config.num_chains < 2:
        return []
    out = [("half_lr", lr / 2, localization)]
    if localization > 0:
        out.append(("half_localization", lr, localization / 2))
    return out


def with_companions(
    settings: Sequence[tuple[float, float]], config: LLCConfig
) -> tuple[list[float], list[float], list[int], list[Companions]]:
    """Settings (lr, localization) -> the sampler's group lrs and localizations: every
    setting's own group first (indices returned), then all check groups; and per setting
    where its checks are."""
    lrs = [lr for lr, _ in settings]
    gammas = [g for _, g in settings]
    own = list(range(len(settings)))
    where: list[Companions] = []
    for lr, gamma in settings:
        found: dict[str, int] = {}
        for name, c_lr, c_gamma in companion_settings(config, lr, gamma):
            found[name] = len(lrs)
            lrs.append(c_lr)
            gammas.append(c_gamma)
        where.append(Companions(**found))
    return lrs, gammas, own, where


def _group_llcs(
    out: _SamplerOutput, k: int, g: int, chance_loss: float | None
) -> tuple[torch.Tensor, torch.Tensor, list[float], list[int]]:
    """One group at one checkpoint: traces (C, D), L(w*) per chain, per-chain LLCs and
    the diverged chains."""
    n_beta = out.n_betas[g]
    chains = out.traces[k, g].double()  # (C, D)
    init_per_chain = out.ref[k, g].double().mean(dim=1)  # (C,)
    per_chain = (n_beta * (chains.mean(dim=1) - init_per_chain)).tolist()
    diverged = diverged_chains(
        chains.numpy(), init_per_chain.numpy(), n_beta, out.num_free[g],
        chance_loss=chance_loss, weights_finite=out.finite[k, g].numpy(),
    )  # fmt: skip
    return chains, init_per_chain, per_chain, diverged


def _check(
    out: _SamplerOutput, k: int, g: int | None, chance_loss: float | None, lrs: Sequence[float],
    gammas: Sequence[float],
) -> tuple[np.ndarray | None, dict[str, Any] | None]:  # fmt: skip
    """A check group's per-chain LLCs (NaN where it diverged) and its record."""
    if g is None:
        return None, None
    _, _, per_chain, diverged = _group_llcs(out, k, g, chance_loss)
    values = np.array([np.nan if c in diverged else x for c, x in enumerate(per_chain)])
    good = values[np.isfinite(values)]
    record = {
        "lr": float(lrs[g]),
        "localization": float(gammas[g]),
        "per_chain": [_json_float(float(x)) for x in values],
        "mean": _json_float(float(good.mean())) if good.size else None,
        "diverged": list(diverged),
    }
    return values, record


def summarise(
    out: _SamplerOutput,
    k: int,
    g: int,
    config: LLCConfig,
    elapsed_s: float,
    chance_loss: float | None = None,
    *,
    companions: Companions = Companions(),
    group_lrs: Sequence[float] | None = None,
    group_localizations: Sequence[float] | None = None,
) -> LLCResult:
    """Group ``g`` at checkpoint ``k`` as an ``LLCResult``, judged with its companions'
    checks (``group_lrs`` / ``group_localizations``: every group's setting, to record
    the checks' own; default: the config's for every group)."""
    n_beta = out.n_betas[g]
    chains, init_per_chain, per_chain, diverged = _group_llcs(out, k, g, chance_loss)
    G = out.traces.shape[1]
    lrs = list(group_lrs) if group_lrs is not None else [config.lr] * G
    gammas = (
        list(group_localizations) if group_localizations is not None else [config.localization] * G
    )
    half_lr, lr_record = _check(out, k, companions.half_lr, chance_loss, lrs, gammas)
    half_loc, loc_record = _check(out, k, companions.half_localization, chance_loss, lrs, gammas)
    mean, std, mean_s, std_s = chain_summary(per_chain, diverged)
    verdict = judge(
        chains.numpy(), init_per_chain.numpy(), n_beta, out.num_free[g], diverged,
        chance_loss=chance_loss, half_lr=half_lr, half_localization=half_loc,
    )  # fmt: skip
    draws = out.diagnostic_draws
    bias_checks = {
        name: record
        for name, record in (("half_lr", lr_record), ("half_localization", loc_record))
        if record is not None
    }
    return LLCResult(
        mean=mean,
        std=std,
        per_chain=[float(x) for x in per_chain],
        init_loss=float(init_per_chain.mean()),
        loss_trace=chains.tolist(),
        n_beta=n_beta,
        diverged=diverged,
        num_params_free=out.num_free[g],
        config=config.to_dict(),
        elapsed_s=elapsed_s,
        verdict=verdict.name,
        verdict_detail=verdict.detail,
        checks=verdict.to_dict()["checks"],
        init_loss_per_chain=init_per_chain.tolist(),
        diagnostics={
            "draw": draws,
            "distance": _json_rows(out.diagnostics["distance"][k, g]),
            "grad_norm": _json_rows(out.diagnostics["grad_norm"][k, g]),
        },
        chance_loss=None if chance_loss is None else float(chance_loss),
        chance_loss_source=getattr(chance_loss, "source", None),
        mean_surviving=mean_s,
        std_surviving=std_s,
        bias_checks=bias_checks,
    )


def _json_rows(rows: torch.Tensor) -> list[list[float | None]]:
    return [[_json_float(float(x)) for x in row] for row in rows]


__all__ = ["Companions", "companion_settings", "summarise", "with_companions"]
