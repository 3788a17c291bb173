"""One page of a run's checkpoint table: each checkpoint with its metrics, its newest LLC
estimate, its failed jobs, how its names were mapped and the series checks."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from phaseboard.analysis.checkpoints import KeyMapping
from phaseboard.server.jobs.lifecycle import split_error
from phaseboard.server.models import Checkpoint, Job, Result
from phaseboard.server.read.results import scalar_values
from phaseboard.server.store.series_checks import series_checks

CHECKPOINT_PAGE = 100


def checkpoint_page(session: Session, run_id: int, page: int = 0) -> dict[str, Any]:
    """One page of a run's checkpoints (newest step first) with their metrics and LLC."""
    total = session.scalar(select(func.count()).where(Checkpoint.run_id == run_id)) or 0
    pages = max(1, math.ceil(total / CHECKPOINT_PAGE))
    page = min(max(page, 0), pages - 1)
    ckpts = session.scalars(
        select(Checkpoint)
        .where(Checkpoint.run_id == run_id)
        .order_by(Checkpoint.step.desc())
        .offset(page * CHECKPOINT_PAGE)
        .limit(CHECKPOINT_PAGE)
    ).all()
    ids = [c.id for c in ckpts]
    metrics: dict[int, dict[str, float]] = {}
    llc: dict[int, tuple[float | None, float | None]] = {}
    failed: dict[int, list[dict[str, str]]] = {}
    llc_info: dict[int, dict[str, Any]] = {}  # result id, verdict and n_beta of that LLC
    if ids:
        for cid, values in session.execute(
            select(Result.checkpoint_id, Result.values).where(
                Result.checkpoint_id.in_(ids), Result.kind == "metrics"
            )
        ):
            metrics.setdefault(cid, {}).update(scalar_values(values))
        for cid, mean, std, rid, verdict, n_beta in session.execute(
            select(
                Result.checkpoint_id,
                Result.values["mean"].as_float(),
                Result.values["std"].as_float(),
                Result.id,
                Result.values["verdict"].as_string(),
                Result.values["n_beta"].as_float(),
            )
            .where(Result.checkpoint_id.in_(ids), Result.kind == "llc")
            .order_by(Result.id)  # the newest estimate of a checkpoint is shown
        ):
            llc[cid] = (mean, std)
            llc_info[cid] = {"id": rid, "verdict": verdict or "ok", "n_beta": n_beta}
        for cid, kind, error in session.execute(
            select(Job.checkpoint_id, Job.kind, Job.error).where(
                Job.checkpoint_id.in_(ids), Job.state == "failed"
            )
        ):
            failed.setdefault(cid, []).append(
                {"kind": kind, "error": (split_error(error)[0] or "")[:300]}
            )
    # Show the loss-like columns first, then a few more; the plots show everything.
    names = sorted({k for m in metrics.values() for k in m})
    names.sort(key=lambda n: (0 if "loss" in n else 1 if "acc" in n else 2, n))
    columns = names[:6]
    rows = [
        {
            "id": c.id,
            "step": c.step,
            "size": c.size,
            "format": c.format,
            "status": c.status,
            "error": c.error,
            "mapping": KeyMapping.from_dict(c.key_mapping).describe(),
            "created_at": c.created_at,
            "metrics": metrics.get(c.id, {}),
            "llc": llc.get(c.id),
            "failed_jobs": failed.get(c.id, []),
            "llc_info": llc_info.get(c.id),
            "duplicate_of_step": c.duplicate_of_step,
        }
        for c in ckpts
    ]
    return {
        "checks": series_checks(session, run_id),  # equal weights, missing steps
        "checkpoints": rows,
        "metric_columns": columns,
        "total": total,
        "page": page,
        "pages": pages,
    }
