"""LLC series for the plots, one series per LLC settings: results computed with other
SGLD settings never mix into a curve. Reads rows only (verdicts were computed by the job).
A result with a diverged chain has no estimate (``mean`` None); the surviving chains' mean
is in ``surviving``, for the hover only.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.jobs.planning import llc_settings, llc_settings_hash
from phaseboard.server.models import Job, Result, Run

# Settings shown in a series label, in this order.
LABEL_KEYS = ("sampler", "lr", "localization", "n_beta", "num_chains", "num_draws")


def settings_label(cfg: dict[str, Any]) -> str:
    parts = []
    for key in LABEL_KEYS:
        value = cfg.get(key, "sgld" if key == "sampler" else None)
        if key == "n_beta" and value is None:
            value = "n/log n"
        parts.append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def llc_series(session: Session, run: Run, shown: str | None = None) -> dict[str, Any]:
    """``llc`` / ``restricted`` series of one settings hash (default: the run's current
    settings, else the settings with most results) and the list of settings available.

    A settings hash may be given by a unique prefix (share links keep it short).
    """
    current = llc_settings_hash(llc_settings(run))
    stmt = (
        select(
            Result.id,
            Result.kind,
            Result.restriction,
            Result.step,
            Result.values["mean"].as_float(),
            Result.values["std"].as_float(),
            Result.values["verdict"].as_string(),
            Result.values["verdict_detail"].as_string(),
            Result.values["n_beta"].as_float(),
            Result.values["mean_surviving"].as_float(),
            Result.values["settings_hash"].as_string(),
            Job.config_hash,
            Job.config,
        )
        .join(Job, Job.id == Result.job_id, isouter=True)
        .where(
            Result.run_id == run.id,
            Result.kind.in_(("llc", "llc_restricted")),
            Result.step.is_not(None),
        )
        .order_by(Result.step, Result.id)
    )
    rows = session.execute(stmt).all()
    settings: dict[str, dict[str, Any]] = {}
    for *_, stored_hash, job_hash, job_cfg in rows:
        key = stored_hash or job_hash or current
        entry = settings.setdefault(key, {"hash": key, "count": 0, "config": None})
        entry["count"] += 1
        if entry["config"] is None and job_cfg is not None:
            entry["config"] = {k: v for k, v in job_cfg.items() if k != "restrictions"}
    if current not in settings:
        settings[current] = {"hash": current, "count": 0, "config": None}
    if settings[current]["config"] is None:  # e.g. results stored without a job row
        settings[current]["config"] = llc_settings(run)
    for entry in settings.values():
        entry["label"] = settings_label(entry["config"] or {})
        entry["current"] = entry["hash"] == current
    chosen = current
    if shown:
        matches = [h for h in settings if h.startswith(shown)]
        if len(matches) == 1:
            chosen = matches[0]
    elif not settings[current]["count"]:
        chosen = max(settings.values(), key=lambda e: e["count"])["hash"]

    def empty() -> dict[str, list[Any]]:
        keys = ("step", "mean", "std", "id", "verdict", "detail", "n_beta", "surviving")
        return {k: [] for k in keys}

    llc = empty()
    restricted: dict[str, dict[str, list[Any]]] = {}
    for rid, kind, restriction, step, mean, std, verdict, detail, n_beta, surv, sh, jh, _ in rows:
        if (sh or jh or current) != chosen:
            continue
        target = llc if kind == "llc" else restricted.setdefault(restriction or "?", empty())
        if verdict == "diverged chains":  # the surviving chains' mean is never the estimate
            surv, mean = surv if surv is not None else mean, None
        finite = mean is not None and math.isfinite(mean)
        # A point with no finite mean (a chain diverged) still marks its checkpoint.
        target["step"].append(step)
        target["mean"].append(mean if finite else None)
        target["surviving"].append(surv if surv is not None and math.isfinite(surv) else None)
        target["std"].append(std if std is not None and math.isfinite(std) else 0.0)
        target["id"].append(rid)
        target["verdict"].append(verdict or "ok")
        target["detail"].append(detail or "")
        target["n_beta"].append(n_beta)
    return {
        "llc": llc,
        "restricted": dict(sorted(restricted.items())),
        "llc_settings": sorted(settings.values(), key=lambda e: (not e["current"], -e["count"])),
        "llc_settings_shown": chosen,
    }
