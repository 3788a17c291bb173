"""Judge an LLC estimate from its own traces: one verdict, computed once, stored with it.

Pure numpy on the per-chain loss traces an estimate already carries, so the verdict of a
stored result can be recomputed (and tested on synthetic traces) without a model.

Verdicts, first match wins:

``diverged chains``
    a chain is diverged if its loss or weights went non-finite, its own LLC exceeds
    ``CHAIN_CEILING x d/2`` (no LLC exceeds d/2, but one chain's estimate of a regular
    model's d/2 scatters around it, so d/2 itself would flag half of them), or (when the
    task's chance-level loss is known) any draw's loss exceeds ``2 x chance`` (worse than
    guessing by a wide margin). Without a chance level a loss above
    ``BLOWUP_FACTOR x (|L(w*)| + 1)`` also counts.
    A diverged chain leaves the estimate without a mean (NaN); the surviving chains' mean
    is kept apart (``mean_surviving``). Any of them makes the verdict this.
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
    large relative to the trace's own noise. Also (burn-in): each chain's LLC from the
    second half of its draws against the first half, a ``shift_test`` (below).
``step-size bias``
    chains at half the step size (lr / 2), run beside the estimate's own chains in the
    same vectorised call, give a different estimate: a ``shift_test`` of the paired
    per-chain values. Either lr is large enough to bias the estimate or the chains have
    not mixed in the steps they were given; both make the number untrustworthy.
``localization bias``
    chains at half the localization (gamma / 2) give a different estimate: the pull to w*
    is shaping the number (a strong pull shrinks it).
``ok``
    none of the above.

``shift_test`` compares paired per-chain LLCs (chain c at the estimate's setting with chain
c at the other setting, or with its own other half: same minibatches and noise, so paired
differences are far less noisy than the chains themselves). It flags a shift when the mean
difference is significant (paired t-test, two-sided, level ``SHIFT_ALPHA``) AND at least
``SHIFT_FRACTION`` of the estimate: large enough to matter, beyond the chains' spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

OK = "ok"
DIVERGED = "diverged chains"
TOO_FEW = "too few draws"
IMPOSSIBLE = "impossible"
LEFT_BASIN = "left the basin"
NEGATIVE = "negative"
NOT_CONVERGED = "not converged"
STEP_SIZE_BIAS = "step-size bias"
LOCALIZATION_BIAS = "localization bias"
VERDICTS = (
    OK, DIVERGED, TOO_FEW, IMPOSSIBLE, LEFT_BASIN, NEGATIVE, NOT_CONVERGED, STEP_SIZE_BIAS,
    LOCALIZATION_BIAS,
)  # fmt: skip

CHAIN_CEILING = 2.0  # a chain's own LLC above this x d/2: diverged
BLOWUP_FACTOR = 100.0  # loss > this x (|L(w*)| + 1) without a chance level: diverged
CHANCE_BLOWUP = 2.0  # loss > this x chance-level loss: diverged
MIN_DRAWS = 20
BASIN_FRACTION = 0.5
TREND_T = 4.0
TREND_NOISE = 0.5
SHIFT_FRACTION = 0.1  # a shift smaller than this fraction of the estimate is not flagged
SHIFT_ALPHA = 0.01  # two-sided level of the paired t-test behind every shift

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
    STEP_SIZE_BIAS: "The estimate moves when lr halves: lower lr (x0.5) and add burn-in or "
    "draws until lr and lr/2 agree (calibration finds such a setting).",
    LOCALIZATION_BIAS: "The estimate moves when localization halves, so the pull to w* shapes "
    "it: lower localization (x0.3); if the chains then leave the basin, lower lr too.",
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


class ChanceLoss(float):
    """A chance-level loss that says where it comes from, e.g. ``"ln(vocab 500)"`` or
    ``"unigram entropy of 65,024 training tokens"``: a float everywhere a float is expected
    (tasks return it from ``Task.chance_loss``), and the verdict names its ``source``."""

    __slots__ = ("source",)
    source: str

    def __new__(cls, value: float, source: str) -> ChanceLoss:
        obj = super().__new__(cls, value)
        obj.source = source
        return obj

    def __getnewargs__(self) -> tuple[float, str]:  # type: ignore[override]
        return (float(self), self.source)

    def __repr__(self) -> str:
        return f"ChanceLoss({float(self)!r}, {self.source!r})"

    def __str__(self) -> str:
        return float.__repr__(self)


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
        if chain_llc > CHAIN_CEILING * num_params_free / 2 or blown:
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


def shift_test(base: np.ndarray, other: np.ndarray, scale: float) -> dict[str, Any]:
    """Is ``other`` shifted from ``base``? Paired per-chain values (NaN pairs dropped).

    ``diff`` = mean(other - base), ``t`` its paired t statistic, ``t_crit`` the two-sided
    ``SHIFT_ALPHA`` quantile for n - 1 degrees of freedom, ``fraction`` = |diff| / |scale|;
    ``shifted`` when both tests pass. Fewer than two pairs: never shifted (``n`` says so).
    """
    base, other = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    keep = np.isfinite(base) & np.isfinite(other)
    d = other[keep] - base[keep]
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "diff": float("nan"), "t": float("nan"), "shifted": False}
    if n < 2:
        return out
    diff = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    t = abs(diff) / se if se > 0 else (0.0 if diff == 0 else float("inf"))
    t_crit = float(stats.t.ppf(1 - SHIFT_ALPHA / 2, n - 1))
    fraction = abs(diff) / abs(scale) if scale != 0 else float("inf")
    shifted = t > t_crit and fraction > SHIFT_FRACTION
    return {"n": n, "diff": diff, "t": t, "t_crit": t_crit, "fraction": fraction,
            "shifted": bool(shifted)}  # fmt: skip


def halves(traces: np.ndarray, init_loss: np.ndarray, n_beta: float) -> tuple[np.ndarray, ...]:
    """Per-chain LLC from the first and from the second half of each chain's draws."""
    half = traces.shape[1] // 2
    first = n_beta * (traces[:, :half].mean(axis=1) - init_loss)
    second = n_beta * (traces[:, half:].mean(axis=1) - init_loss)
    return first, second


def judge(
    traces: np.ndarray,
    init_loss: np.ndarray | float,
    n_beta: float,
    num_params_free: int,
    diverged: list[int],
    *,
    chance_loss: float | None = None,
    half_lr: np.ndarray | None = None,
    half_localization: np.ndarray | None = None,
) -> Verdict:
    """The verdict of one estimate. ``traces``: (chains, draws) minibatch losses;
    ``init_loss``: L(w*) (scalar or per chain); ``diverged``: from ``diverged_chains``.

    ``half_lr`` / ``half_localization``: per-chain LLCs of chains run at lr / 2 resp. at
    localization / 2 on the same minibatches and noise (chain c pairs with chain c; NaN
    where such a chain diverged), from the same sampler call; None: check not run.
    ``chance_loss`` may be a ``ChanceLoss``, whose ``source`` the verdict names.
    """
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
    per_chain = n_beta * (traces.mean(axis=1) - init)
    mean = float(per_chain.mean())
    checks["mean"] = mean
    # Every check is computed and kept in ``checks``; the first that fails names the verdict.
    trend = trend_test(traces.mean(axis=0))
    checks.update({f"trend_{k}": v for k, v in trend.items()})
    first, second = halves(traces, init, n_beta)
    burn = _record(checks, "halves", shift_test(first, second, mean))
    shifts = []
    for key, other, name, what in (
        ("half_lr", half_lr, STEP_SIZE_BIAS, "lr / 2"),
        ("half_localization", half_localization, LOCALIZATION_BIAS, "localization / 2"),
    ):
        if other is None:
            continue
        other = np.asarray(other, dtype=float)
        shift = _record(checks, key, shift_test(per_chain[: len(other)], other, mean))
        other_mean = float(np.nanmean(other)) if np.isfinite(other).any() else None
        checks[f"{key}_mean"] = other_mean
        shifts.append((shift, name, what, other_mean))
    if mean > bound:
        return Verdict(IMPOSSIBLE, f"LLC {mean:.4g} > d/2 = {bound:.4g}", checks)
    if chance_loss is not None:
        ceiling = n_beta * (chance_loss - float(init.mean()))
        source = getattr(chance_loss, "source", None)
        checks["ceiling"] = ceiling
        checks["chance_loss"] = float(chance_loss)
        if source:
            checks["chance_loss_source"] = source
        if ceiling > 0 and mean >= BASIN_FRACTION * ceiling:
            sampled = float(traces.mean())
            named = f" ({source})" if source else ""
            return Verdict(
                LEFT_BASIN,
                f"mean sampled loss {sampled:.4g} vs chance {float(chance_loss):.4g}{named} "
                f"(LLC {mean:.4g} is {mean / ceiling:.0%} of its ceiling {ceiling:.4g})",
                checks,
            )
    if mean < 0:
        return Verdict(NEGATIVE, f"LLC {mean:.4g} < 0", checks)
    if trend["t"] > TREND_T and trend["drift"] > TREND_NOISE * trend["noise"]:
        return Verdict(
            NOT_CONVERGED,
            f"second half drifts by {trend['drift']:.3g} (t = {trend['t']:.1f}, "
            f"noise {trend['noise']:.3g})",
            checks,
        )
    if burn["shifted"]:
        return Verdict(
            NOT_CONVERGED,
            f"LLC from the first half of the draws {float(first.mean()):.4g} vs the second "
            f"half {float(second.mean()):.4g} (t = {burn['t']:.1f})",
            checks,
        )
    for shift, name, what, other_mean in shifts:
        if shift["shifted"]:
            return Verdict(
                name,
                f"LLC {mean:.4g} at this setting vs {other_mean:.4g} at {what} "
                f"({shift['fraction']:.0%} apart, t = {shift['t']:.1f} over "
                f"{shift['n']} paired chains)",
                checks,
            )
    return Verdict(OK, "flat traces, plausible estimate", checks)


def _record(checks: dict[str, Any], key: str, shift: dict[str, Any]) -> dict[str, Any]:
    """Keep a ``shift_test``'s numbers in ``checks`` as flat ``{key}_{name}`` entries."""
    for name in ("diff", "t", "n", "shifted"):
        checks[f"{key}_{name}"] = shift[name]
    return shift


__all__ = [
    "ADVICE",
    "VERDICTS",
    "ChanceLoss",
    "Verdict",
    "diverged_chains",
    "halves",
    "judge",
    "shift_test",
    "trend_test",
]
