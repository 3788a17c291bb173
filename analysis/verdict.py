"""Judge an LLC estimate from its own traces: one verdict, computed once, stored with it.

Pure numpy on the per-chain loss traces an estimate already carries, so the verdict of a
stored result can be recomputed (and tested on synthetic traces) without a model.

Verdicts, first match wins:

``diverged chains``
    a chain is diverged if its loss or weights went non-finite, its own LLC exceeds d/2
    (no chain of a well-posed estimate can), or (when the task's chance-level loss is
    known) any draw's loss exceeds ``2 x chance`` (worse than guessing by a wide margin).
    Without a chance level a loss above ``BLOWUP_FACTOR x (|L(w*)| + 1)`` also counts.
    Diverged chains are excluded from mean and std; any of them makes the verdict this.
``too few draws``
    fewer than ``MIN_DRAWS`` draws, or fewer than two usable chains (no std to speak of).
``impossible``
    the mean exceeds d/2 for d free parameters: an LLC never does.
``left the basin``
    the estimate is at least ``BASIN_FRACTION`` of its ceiling ``n_beta x (chance - L(w*))``,
    i.e. the chains' mean sampled loss moved more than halfway from L(w*) to chance level.
``negative``
    the mean is below zero: the chains found lower loss than w*, so w* is not a local
    minimum at this step size (usual before training settles).
``not converged``
    the chain-mean loss trace still trends over its second half. Test: least-squares slope
    of the second half; its standard error is inflated by the lag-1 autocorrelation of the
    residuals (``sqrt((1 + rho) / (1 - rho))``, SGLD traces are autocorrelated). The trace
    is not converged if ``|slope / se| > TREND_T`` AND the drift over the half
    (``|slope| x length``) exceeds ``TREND_NOISE`` x the residual std: significant and
    large relative to the trace's own noise.
``ok``
    none of the above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OK = "ok"
DIVERGED = "diverged chains"
TOO_FEW = "too few draws"
IMPOSSIBLE = "impossible"
LEFT_BASIN = "left the basin"
NEGATIVE = "negative"
NOT_CONVERGED = "not converged"
VERDICTS = (OK, DIVERGED, TOO_FEW, IMPOSSIBLE, LEFT_BASIN, NEGATIVE, NOT_CONVERGED)

BLOWUP_FACTOR = 100.0  # loss > this x (|L(w*)| + 1) without a chance level: diverged
CHANCE_BLOWUP = 2.0  # loss > this x chance-level loss: diverged
MIN_DRAWS = 20
BASIN_FRACTION = 0.5
TREND_T = 4.0
TREND_NOISE = 0.5

# What to try, per verdict (shown next to the verdict in the browser).
ADVICE = {
    OK: "Nothing: the traces are flat and the estimate is plausible.",
    DIVERGED: "Lower lr (x0.3) or raise localization (x3); then re-run.",
    TOO_FEW: "Raise num_draws (>= 100) or num_chains (>= 4).",
    IMPOSSIBLE: "The chains are not sampling a local posterior: lower lr and raise "
    "localization; check n_beta.",
    LEFT_BASIN: "The chains wandered to chance-level loss: raise localization (x10) or "
    "lower lr (x0.1).",
    NEGATIVE: "w* is not a local minimum at this resolution: usual before training "
    "settles; otherwise lower lr or add burn-in.",
    NOT_CONVERGED: "The loss still drifts: add burn-in steps or draws, or raise lr a little.",
}


@dataclass
class Verdict:
    name: str
    detail: str
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.name == OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.name,
            "verdict_detail": self.detail,
            "verdict_advice": ADVICE[self.name],
            "checks": {k: _clean(v) for k, v in self.checks.items()},
        }


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v


def diverged_chains(
    traces: np.ndarray,
    init_loss: np.ndarray | float,
    n_beta: float,
    num_params_free: int,
    *,
    chance_loss: float | None = None,
    weights_finite: np.ndarray | None = None,
) -> list[int]:
    """Indices of diverged chains (see the module doc). ``traces``: (chains, draws)."""
    traces = np.asarray(traces, dtype=float)
    init = np.broadcast_to(np.asarray(init_loss, dtype=float), traces.shape[:1])
    out = []
    for c, row in enumerate(traces):
        if not np.isfinite(row).all() or (weights_finite is not None and not weights_finite[c]):
            out.append(c)
            continue
        chain_llc = n_beta * (row.mean() - init[c])
        if chance_loss is not None and chance_loss > 0:
            blown = row.max() > CHANCE_BLOWUP * chance_loss
        else:
            blown = row.max() > BLOWUP_FACTOR * (abs(init[c]) + 1)
        if chain_llc > num_params_free / 2 or blown:
            out.append(c)
    return out


def trend_test(trace: np.ndarray) -> dict[str, float]:
    """Slope test on the second half of a (mean) trace; see the module doc."""
    y = np.asarray(trace, dtype=float)
    half = y[len(y) // 2 :]
    n = len(half)
    if n < 4 or not np.isfinite(half).all():
        return {"t": float("nan"), "drift": float("nan"), "noise": float("nan"), "rho": 0.0}
    x = np.arange(n, dtype=float)
    xc = x - x.mean()
    slope = float((xc * (half - half.mean())).sum() / (xc**2).sum())
    resid = half - half.mean() - slope * xc
    noise = float(resid.std(ddof=2)) if n > 2 else 0.0
    denom = float((resid[:-1] ** 2).sum())
    rho = float((resid[1:] * resid[:-1]).sum() / denom) if denom > 0 else 0.0
    rho = min(max(rho, 0.0), 0.95)
    se = noise / math.sqrt(float((xc**2).sum())) * math.sqrt((1 + rho) / (1 - rho))
    t = abs(slope) / se if se > 0 else (0.0 if slope == 0 else float("inf"))
    return {"t": t, "drift": abs(slope) * n, "noise": noise, "rho": rho}


def judge(
    traces: np.ndarray,
    init_loss: np.ndarray | float,
    n_beta: float,
    num_params_free: int,
    diverged: list[int],
    *,
    chance_loss: float | None = None,
) -> Verdict:
    """The verdict of one estimate. ``traces``: (chains, draws) minibatch losses;
    ``init_loss``: L(w*) (scalar or per chain); ``diverged``: from ``diverged_chains``."""
    traces = np.asarray(traces, dtype=float)
    chains, draws = traces.shape
    init = np.broadcast_to(np.asarray(init_loss, dtype=float), (chains,))
    good = [c for c in range(chains) if c not in diverged]
    bound = num_params_free / 2
    checks: dict[str, Any] = {"bound_d_over_2": bound, "chains_used": len(good)}
    if diverged:
        return Verdict(DIVERGED, f"{len(diverged)} of {chains} chains diverged", checks)
    if draws < MIN_DRAWS or len(good) < 2:
        return Verdict(
            TOO_FEW, f"{draws} draws x {len(good)} chains (need >= {MIN_DRAWS} x 2)", checks
        )
    per_chain = n_beta * (traces[good].mean(axis=1) - init[good])
    mean = float(per_chain.mean())
    checks["mean"] = mean
    if mean > bound:
        return Verdict(IMPOSSIBLE, f"LLC {mean:.4g} > d/2 = {bound:.4g}", checks)
    if chance_loss is not None:
        ceiling = n_beta * (chance_loss - float(init[good].mean()))
        checks["ceiling"] = ceiling
        checks["chance_loss"] = chance_loss
        if ceiling > 0 and mean >= BASIN_FRACTION * ceiling:
            sampled = float(traces[good].mean())
            return Verdict(
                LEFT_BASIN,
                f"mean sampled loss {sampled:.4g} vs chance {chance_loss:.4g} "
                f"(LLC {mean:.4g} is {mean / ceiling:.0%} of its ceiling {ceiling:.4g})",
                checks,
            )
    if mean < 0:
        return Verdict(NEGATIVE, f"LLC {mean:.4g} < 0", checks)
    trend = trend_test(traces[good].mean(axis=0))
    checks.update({f"trend_{k}": v for k, v in trend.items()})
    if trend["t"] > TREND_T and trend["drift"] > TREND_NOISE * trend["noise"]:
        return Verdict(
            NOT_CONVERGED,
            f"second half drifts by {trend['drift']:.3g} (t = {trend['t']:.1f}, "
            f"noise {trend['noise']:.3g})",
            checks,
        )
    return Verdict(OK, "flat traces, plausible estimate", checks)


__all__ = [
    "ADVICE",
    "VERDICTS",
    "Verdict",
    "diverged_chains",
    "judge",
    "trend_test",
]
