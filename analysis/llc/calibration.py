"""Calibration: a grid of (lr, localization, n_beta) in one vectorised batch; its pick."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .config import LLCConfig, LossFn, ParamMask, Progress
from .result import _json_float
from .sampler import _run_sgld, _summarise

# ---------------------------------------------------------------------------- calibration


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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("mean", "std", "drift", "spread"):
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

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
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
            "verdict"
        ]
        for e in self.entries:
            star = "* " if e is self.recommended else "  "
            lines.append(
                f"{star}{e.lr:>10.3g} {e.localization:>10.3g} {e.n_beta:>8.4g} {e.mean:>10.4g} "
                f"{e.std:>9.3g} {len(e.diverged):>4} {e.verdict}"
            )
        lines.append(self.reason)
        return "\n".join(lines)


def recommend(entries: Sequence[CalibrationEntry]) -> tuple[CalibrationEntry | None, str]:
    """The rule (README "Calibration"): among settings whose verdict is ``ok`` on every
    calibrated checkpoint (d/2 bound, basin, divergence, sign and trend all pass), the
    largest lr (fastest mixing); ties go to the smallest localization (least pull to w*),
    then to the smallest n_beta."""
    ok = [e for e in entries if e.ok]
    if not ok:
        counts: dict[str, int] = {}
        for e in entries:
            counts[e.verdict] = counts.get(e.verdict, 0) + 1
        why = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        return None, f"no setting was ok on every checkpoint ({why}): try smaller lrs, " + (
            "larger localizations or more draws"
        )
    best = max(ok, key=lambda e: (e.lr, -e.localization, -e.n_beta))
    return best, (
        f"recommended lr={best.lr:g}, localization={best.localization:g}, "
        f"n_beta={best.n_beta:.4g}: the largest lr whose verdict is ok on all "
        f"{len(best.per_checkpoint)} calibrated checkpoint(s)"
    )


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
    the first settled, a middle and the last checkpoint); None: ``model``'s own weights.
    A setting is recommended only if its verdict (``analysis.verdict``) is ``ok`` on all
    of them: a setting fine at the end of training can diverge earlier on. See
    ``recommend`` for the rule.
    """
    n_betas = [config.effective_n_beta] if n_betas is None else [float(b) for b in n_betas]
    grid = [(float(lr), float(g), b) for lr in lrs for g in localizations for b in n_betas]
    if checkpoints is None:
        checkpoints = [{**dict(model.named_parameters()), **dict(model.named_buffers())}]
    out = _run_sgld(
        model, loss_fn, batches, config, list(checkpoints), [param_mask] * len(grid),
        [lr for lr, _, _ in grid], [g for _, g, _ in grid], progress,
        group_nbeta=[b for _, _, b in grid],
    )  # fmt: skip
    K = len(checkpoints)
    entries = []
    for g, (lr, gamma, nb) in enumerate(grid):
        cfg = dataclasses.replace(config, lr=lr, localization=gamma, n_beta=nb)
        per_ckpt = []
        for k in range(K):
            res = _summarise(out, k, g, cfg, out.elapsed_s / (len(grid) * K), chance_loss)
            good = [c for c in range(config.num_chains) if c not in res.diverged]
            trace = out.traces[k, g, good].double().mean(dim=0).tolist() if good else []
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
                        "verdict": r.verdict,
                        "verdict_detail": r.verdict_detail,
                        "diverged": r.diverged,
                        "init_loss": _json_float(r.init_loss),
                        "num_params_free": r.num_params_free,
                        "mean_trace": [_json_float(x) for x in t],
                    }
                    for k, (r, t) in enumerate(per_ckpt)
                ],
            )
        )
    best, reason = recommend(entries)
    return CalibrationReport(entries, best, reason, config.to_dict())
