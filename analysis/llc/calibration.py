"""Calibration: a grid of (lr, localization, n_beta) in one vectorised batch; its pick."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .config import LLCConfig, LossFn, ParamMask, Progress
from .result import _json_float
from .sampler import _run_sgld
from .summary import companion_settings, summarise, with_companions

# ---------------------------------------------------------------------------- calibration

# calibration_points: the trajectory starts where the loss has made this much of its fall.
START_DROP = 0.1


@dataclass
class CalibrationEntry:
    """One (lr, localization, n_beta) setting; the summary fields are at the primary
    (last) calibrated checkpoint, ``per_checkpoint`` has every checkpoint's."""

    lr: float
    localization: float
    mean: float
    std: float
    diverged: list[int]
    stable: bool  # no diverged chain and 0 < estimate <= d/2
    flat: bool  # the verdict's trend test passed (second half of the mean trace)
    drift: float  # |slope| * length of the 2nd half of the mean trace
    spread: float  # residual std of the 2nd half of the mean trace
    mean_trace: list[float]
    n_beta: float = 0.0
    verdict: str = "ok"  # the first non-ok verdict over the checkpoints, else "ok"
    ok: bool = True  # verdict ok on every calibrated checkpoint
    per_checkpoint: list[dict[str, Any]] = field(default_factory=list)
    # how much the estimate moves when lr halves, at most over the checkpoints (``lr_shift``)
    lr_shift: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("mean", "std", "drift", "spread", "lr_shift"):
            d[key] = _json_float(d[key])
        d["mean_trace"] = [_json_float(x) for x in self.mean_trace]
        return d


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@dataclass
class CalibrationReport:
    entries: list[CalibrationEntry]
    recommended: CalibrationEntry | None
    reason: str
    config: dict[str, Any]
    # Positions of the calibrated checkpoints left out of the rule (``descending_checkpoints``).
    left_out: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "left_out": list(self.left_out),
            "entries": [e.to_dict() for e in self.entries],
            "recommended": None
            if rec is None
            else {"lr": rec.lr, "localization": rec.localization, "n_beta": rec.n_beta},
            "reason": self.reason,
            "config": dict(self.config),
        }

    def summary(self) -> str:
        """A fixed-width table, one line per setting, the recommended one starred."""
        lines = [
            f"{'':2}{'lr':>10} {'gamma':>10} {'n_beta':>8} {'llc':>10} {'std':>9} {'div':>4} "
            f"{'lr/2':>6} verdict"
        ]
        for e in self.entries:
            star = "* " if e is self.recommended else "  "
            lines.append(
                f"{star}{e.lr:>10.3g} {e.localization:>10.3g} {e.n_beta:>8.4g} {e.mean:>10.4g} "
                f"{e.std:>9.3g} {len(e.diverged):>4} {e.lr_shift:>6.1%} {e.verdict}"
            )
        lines.append(self.reason)
        return "\n".join(lines)


def calibration_points(
    steps: Sequence[float], losses: Sequence[float | None] | None = None, count: int = 3
) -> list[int]:
    """Indices of ``count`` checkpoints to calibrate on, spread over the whole trajectory
    and including its sharpest part.

    The trajectory starts past the initial weights (no local minimum there): at the
    first checkpoint whose loss has fallen by ``START_DROP`` of the run's whole fall
    (first loss - lowest loss), or without losses at the first non-zero step. The
    sharpest part is the checkpoint that ends the segment where the loss moves fastest
    per log-step (|change in loss| / change in log10(step + 1) between consecutive
    checkpoints); the others are the last checkpoint and checkpoints nearest to evenly
    spaced points in log-step from the start to the last. ``losses``: the training loss at
    each step (None/NaN where unknown). Returns sorted indices into ``steps``, fewer than
    ``count`` only when there are fewer usable checkpoints.
    """
    order = sorted(range(len(steps)), key=lambda i: steps[i])
    known = [
        i for i in order if losses is not None and losses[i] is not None
        and math.isfinite(float(losses[i]))
    ]  # fmt: skip
    usable = [i for i in order if steps[i] > 0]
    if len(known) >= 2:
        values = [float(losses[i]) for i in known]  # type: ignore[index, arg-type]
        fall = values[0] - min(values)
        if fall > 0:
            moved = (
                i for i, v in zip(known, values, strict=True) if values[0] - v >= START_DROP * fall
            )
            start = next(moved)
            usable = [i for i in usable if steps[i] >= steps[start]]
    if not usable:
        usable = order[-1:]
    if len(usable) <= count:
        return sorted(usable, key=lambda i: steps[i])
    x = {i: math.log10(float(steps[i]) + 1.0) for i in usable}
    picks: list[int] = [usable[-1]]
    if known:
        best, sharpest = 0.0, None
        for a, b in itertools.pairwise(known):
            dx = math.log10(float(steps[b]) + 1.0) - math.log10(float(steps[a]) + 1.0)
            rate = abs(float(losses[b]) - float(losses[a])) / dx if dx > 0 else 0.0
            if rate > best and b in x:
                best, sharpest = rate, b
        if sharpest is not None and sharpest not in picks:
            picks.append(sharpest)
    lo, hi = x[usable[0]], x[usable[-1]]
    slots = max(count - len(picks), 0)
    for j in range(slots):
        target = lo + (hi - lo) * j / max(count - 1, 1)
        free = [i for i in usable if i not in picks]
        picks.append(min(free, key=lambda i: (abs(x[i] - target), steps[i])))
    return sorted(picks, key=lambda i: steps[i])


def lr_shift(entry: CalibrationEntry, skip: Sequence[int] = ()) -> float:
    """How much the setting's estimate moves when lr halves: the largest |LLC at lr / 2 -
    LLC| / |LLC| over its calibrated checkpoints (its own step-size check), those at the
    positions ``skip`` left out; NaN without that check (``bias_checks`` off) or where an
    estimate is undefined."""
    shifts = []
    for k, c in enumerate(entry.per_checkpoint):
        if k in skip:
            continue
        half = c.get("bias_checks", {}).get("half_lr")
        if half is None or c["mean"] is None or c["mean"] == 0:
            return float("nan")
        shifts.append(abs(half - c["mean"]) / abs(c["mean"]))
    return max(shifts) if shifts else float("nan")


# A checkpoint where every setting's verdict is one of these is not a local minimum: the
# chains of every step size and localization go downhill from w*, so it cannot tell the
# settings apart, and requiring "ok" there would rule every setting out.
DESCENT_VERDICTS = frozenset({"negative"})


def descending_checkpoints(entries: Sequence[CalibrationEntry]) -> list[int]:
    """Positions of the calibrated checkpoints where every setting's verdict is in
    ``DESCENT_VERDICTS`` (left out of ``recommend``'s rule); none when that is all of them
    (then no checkpoint is left to rank the settings on, and none is left out)."""
    if not entries or any(not e.per_checkpoint for e in entries):
        return []
    n = min(len(e.per_checkpoint) for e in entries)
    out = [
        k
        for k in range(n)
        if all(e.per_checkpoint[k].get("verdict") in DESCENT_VERDICTS for e in entries)
    ]
    return out if len(out) < n else []


def judge_without_descent(entries: Sequence[CalibrationEntry]) -> list[int]:
    """Each setting's ``verdict`` / ``ok`` over the calibrated checkpoints that can rank
    the settings (all but ``descending_checkpoints``, whose positions are returned); each
    checkpoint keeps its own verdict in ``per_checkpoint``."""
    skip = descending_checkpoints(entries)
    for e in entries:
        bad = _failures(e, skip)
        e.verdict, e.ok = (bad[0] if bad else "ok"), not bad
        e.lr_shift = lr_shift(e, skip)
    return skip


def _failures(entry: CalibrationEntry, skip: Sequence[int]) -> list[str]:
    """The setting's verdicts other than ok, at its calibrated checkpoints but ``skip``."""
    verdicts = (c.get("verdict", "ok") for k, c in enumerate(entry.per_checkpoint) if k not in skip)
    return [v for v in verdicts if v != "ok"]


def _ok_at(entry: CalibrationEntry, skip: Sequence[int]) -> bool:
    """The setting's verdict is ok at every calibrated checkpoint but those in ``skip``."""
    return entry.ok if not skip else not _failures(entry, skip)


def recommend(entries: Sequence[CalibrationEntry]) -> tuple[CalibrationEntry | None, str]:
    """The setting to use (docs/trusting-the-llc.md, "Calibration").

    Only settings whose verdict is ``ok`` on every calibrated checkpoint count: d/2 bound,
    basin, divergence, sign, trend, burn-in halves, and their own step-size and
    localization checks (the estimate stable when lr halves and when localization
    halves). A checkpoint where every setting is "negative" is left out of that
    (``descending_checkpoints``: not a local minimum, it cannot rank the settings), and the
    reason says so. Among those:

    1. the weakest localization: a strong pull to w* shrinks the estimate, so the weakest
       pull that still keeps every chain in the basin is the least biased;
    2. at that localization, the lr on the plateau: the one whose estimate moves least
       when lr halves (``lr_shift``, over every checkpoint). Against lr the estimate rises
       at both ends (too few steps to mix at small lrs, discretisation bias at large ones);
       where it is flattest it depends least on either. Without step-size checks, the
       smallest ok lr (the least discretisation bias);
    3. ties: the larger lr (faster mixing), then the smallest n_beta.

    A stable setting at a stronger localization is not preferred to the weakest ok one:
    the pull biases every lr alike, so stability there is stability of a biased estimate.
    """
    skip = descending_checkpoints(entries)
    ok = [e for e in entries if _ok_at(e, skip)]
    n = len(entries[0].per_checkpoint) if entries else 0
    left_out = ""
    if skip:
        which = ", ".join(_ordinal(k + 1) for k in skip)
        left_out = (
            f"; the {which} of {n} calibrated checkpoints left out: every setting's LLC was "
            "negative there (the chains go downhill: not a local minimum)"
        )
    if not ok:
        counts: dict[str, int] = {}
        for e in entries:
            counts[e.verdict] = counts.get(e.verdict, 0) + 1
        why = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        return None, f"no setting was ok on every checkpoint ({why}): try smaller lrs, " + (
            "more draws and burn-in, or more chains"
        ) + left_out
    weakest = min(e.localization for e in ok)
    at = [e for e in ok if e.localization == weakest]
    shifts = {id(e): lr_shift(e, skip) if skip else e.lr_shift for e in at}
    measured = [e for e in at if math.isfinite(shifts[id(e)])]
    if measured:
        best = min(measured, key=lambda e: (shifts[id(e)], -e.lr, e.n_beta))
        why = (
            f"the weakest localization with an ok setting, and there the lr whose estimate "
            f"moves least when lr halves ({shifts[id(best)]:.1%} at most over "
            f"{n - len(skip)} calibrated checkpoint(s))"
        )
    else:
        best = min(at, key=lambda e: (e.lr, e.n_beta))
        why = "the weakest localization with an ok setting, and there the smallest ok lr"
    return best, (
        f"recommended lr={best.lr:g}, localization={best.localization:g}, "
        f"n_beta={best.n_beta:.4g}: {why}{left_out}"
    )


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def calibrate(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    lrs: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2),
    localizations: Sequence[float] = (1.0, 10.0, 100.0),
    n_betas: Sequence[float] | None = None,
    checkpoints: Sequence[Mapping[str, Tensor]] | None = None,
    param_mask: ParamMask | None = None,
    chance_loss: float | None = None,
    progress: Progress | None = None,
) -> CalibrationReport:
    """Run the (lr x localization x n_beta) grid on every checkpoint in one vmap batch.

    ``checkpoints``: state_dicts of the same architecture to calibrate on together (e.g.
    ``calibration_points`` of the trajectory); None: ``model``'s own weights. Every
    setting runs with its bias checks (``config.bias_checks``: chains at lr / 2 and at
    localization / 2) in the same call, and is recommended only if its verdict is ``ok``
    on all checkpoints: a setting fine at the end of training can fail earlier on. See
    ``recommend`` for the rule.
    """
    n_betas = [config.effective_n_beta] if n_betas is None else [float(b) for b in n_betas]
    grid = [(float(lr), float(g), b) for lr in lrs for g in localizations for b in n_betas]
    if checkpoints is None:
        checkpoints = [{**dict(model.named_parameters()), **dict(model.named_buffers())}]
    settings = [(lr, g) for lr, g, _ in grid]
    group_lrs, group_gammas, own, where = with_companions(settings, config)
    # A check group takes its setting's n_beta.
    nbetas = [b for _, _, b in grid]
    for lr, g, b in grid:
        nbetas += [b] * len(companion_settings(config, lr, g))
    out = _run_sgld(
        model, loss_fn, batches, config, list(checkpoints), [param_mask] * len(group_lrs),
        group_lrs, group_gammas, progress, group_nbeta=nbetas,
    )  # fmt: skip
    K = len(checkpoints)
    share = out.elapsed_s / (len(grid) * K)
    entries = []
    for g, (lr, gamma, nb) in enumerate(grid):
        cfg = dataclasses.replace(config, lr=lr, localization=gamma, n_beta=nb)
        per_ckpt = []
        for k in range(K):
            res = summarise(
                out, k, own[g], cfg, share, chance_loss, companions=where[g],
                group_lrs=group_lrs, group_localizations=group_gammas,
            )  # fmt: skip
            good = [c for c in range(config.num_chains) if c not in res.diverged]
            trace = out.traces[k, own[g], good].double().mean(dim=0).tolist() if good else []
            per_ckpt.append((res, trace))
        res, trace = per_ckpt[-1]
        bad = [r.verdict for r, _ in per_ckpt if r.verdict != "ok"]
        entries.append(
            CalibrationEntry(
                lr=lr,
                localization=gamma,
                mean=res.mean,
                std=res.std,
                diverged=res.diverged,
                stable=not res.diverged
                and math.isfinite(res.mean)
                and 0 < res.mean <= res.num_params_free / 2,
                flat=res.verdict != "not converged",
                drift=float(res.checks.get("trend_drift") or float("nan")),
                spread=float(res.checks.get("trend_noise") or float("nan")),
                mean_trace=trace,
                n_beta=nb,
                verdict=bad[0] if bad else "ok",
                ok=not bad,
                per_checkpoint=[
                    {
                        "index": k,
                        "mean": _json_float(r.mean),
                        "std": _json_float(r.std),
                        "per_chain": [_json_float(x) for x in r.per_chain],
                        "verdict": r.verdict,
                        "verdict_detail": r.verdict_detail,
                        "diverged": r.diverged,
                        "init_loss": _json_float(r.init_loss),
                        "num_params_free": r.num_params_free,
                        "mean_trace": [_json_float(x) for x in t],
                        "bias_checks": {
                            name: check["mean"] for name, check in r.bias_checks.items()
                        },
                    }
                    for k, (r, t) in enumerate(per_ckpt)
                ],
            )
        )
    for e in entries:
        e.lr_shift = lr_shift(e)
    left_out = judge_without_descent(entries)
    best, reason = recommend(entries)
    return CalibrationReport(entries, best, reason, config.to_dict(), left_out)
