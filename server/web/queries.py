"""Page context: the rows each page shows, read straight from the SQL store.

Pages never compute analyses; this module only reads (and downsamples) rows. Every function
takes a ``Session`` and returns plain dicts/lists ready for a template or a JSON response.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from phaseboard.analysis.checkpoints import KeyMapping
from phaseboard.server.db import get_existing
from phaseboard.server.jobs.lifecycle import ACTIVE, split_error
from phaseboard.server.models import Checkpoint, Job, PhaseBoundary, Result, Run
from phaseboard.server.series_store import read_series, read_wall_times, series_names
from phaseboard.server.store.series_checks import series_checks

RUN_SORTS = {
    "activity": "last activity",
    "name": "name",
    "created": "created",
    "checkpoints": "checkpoints",
    "status": "status",
}
CHECKPOINT_PAGE = 100


def get_run(session: Session, run_id: int) -> Run:
    return get_existing(session, Run, run_id, "run")


def run_dict(run: Run, crashed_after_s: float = 120.0) -> dict[str, Any]:
    from phaseboard.server.tracking import effective_status

    return {
        "status": effective_status(run, crashed_after_s),
        "config": run.config or {},
        "summary": run.summary or {},
        "id": run.id,
        "name": run.name,
        "task": run.task,
        "task_config": run.task_config or {},
        "tags": list(run.tags or []),
        "notes": run.notes or "",
        "created_at": run.created_at,
        "updated_at": run.updated_at,
    }


def _latest(*values: datetime | None) -> datetime | None:
    present = [_aware(v) for v in values if v is not None]
    return max(present) if present else None


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every timestamp we write is UTC."""
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


def list_runs(
    session: Session,
    *,
    q: str = "",
    tag: str = "",
    task: str = "",
    sort: str = "activity",
    status: str = "",
    filter: str = "",
    group: str = "",
    cols: str = "",
    limit: int = 200,
    crashed_after_s: float = 120.0,
) -> dict[str, Any]:
    """Runs with checkpoint/job counts, last activity, status, config and summary columns,
    filtered (``server.run_filter``), grouped and sorted (``server.runs_table``).

    A bad filter/column/sort does not fail the page: the table is shown unfiltered with the
    parser's message.
    """
    from phaseboard.server.run_filter import FilterError
    from phaseboard.server.runs_table import runs_table
    from phaseboard.server.tracking import STATUSES

    known_sort = sort.lstrip("-") in RUN_SORTS or sort.lstrip("-").startswith(
        ("config.", "summary.")
    )
    sort = sort if known_sort else "activity"
    args = dict(q=q, tag=tag, task=task, status=status, filter=filter, sort=sort)
    error = ""
    try:
        table = runs_table(
            session, crashed_after_s=crashed_after_s, group=group, cols=cols, limit=limit, **args
        )
    except FilterError as exc:
        error = exc.message
        table = runs_table(session, crashed_after_s=crashed_after_s, q=q, tag=tag, task=task)
    return {
        "runs_json": _parcoords_rows(table),
        "runs": table["runs"],
        "total": table["total"],
        "columns": table["columns"],
        "column_choices": table["column_choices"],
        "groups": table["groups"],
        "filter_error": error,
        "all_tags": table["all_tags"],
        "all_tasks": table["all_tasks"],
        "statuses": STATUSES,
        "filters": {**args, "group": group, "cols": ",".join(table["columns"])},
        "limit": limit,
        "sorts": RUN_SORTS,
    }


def _parcoords_rows(table: dict[str, Any]) -> dict[str, Any]:
    """The shown runs' values of the chosen columns (or the first few choices), for
    the parallel-coordinates view; JSON-safe scalars only."""
    from phaseboard.server.run_filter import field_value, parse_field

    columns = table["columns"] or table["column_choices"][:6]
    fields = [parse_field(c) for c in columns]
    out = []
    for r in table["runs"]:
        values = []
        for f in fields:
            v = field_value(r, f)
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            values.append(v if v is None or isinstance(v, int | float | str | bool) else str(v))
        out.append({"id": r["id"], "name": r["name"], "values": values})
    return {"columns": columns, "runs": out}


def scalar_values(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a metrics result to ``{name: float}`` (nested dicts become ``a.b``)."""
    out: dict[str, float] = {}
    for key, value in (values or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(scalar_values(value, prefix=f"{name}."))
    return out


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


def jobs_panel(session: Session, run_id: int, limit: int = 30) -> dict[str, Any]:
    """Job counts by state plus the active and most recent failed jobs of a run, and each
    lens's state on it (``server.lenses._states``)."""
    from phaseboard.server.lenses._states import lens_states

    counts = dict(
        session.execute(
            select(Job.state, func.count()).where(Job.run_id == run_id).group_by(Job.state)
        ).all()
    )
    shown = session.scalars(
        select(Job)
        .where(Job.run_id == run_id, Job.state.in_((*ACTIVE, "failed")))
        .order_by(Job.state.desc(), Job.id.desc())
        .limit(limit)
    ).all()
    ckpt_ids = {j.checkpoint_id for j in shown if j.checkpoint_id}
    # Only the shown jobs' checkpoints: this panel is polled while jobs run.
    by_id = select(Checkpoint.id, Checkpoint.step).where(Checkpoint.id.in_(ckpt_ids))
    steps = dict(session.execute(by_id).all())
    jobs = [
        {
            "id": j.id,
            "kind": j.kind,
            "restriction": j.restriction,
            "step": steps.get(j.checkpoint_id) if j.checkpoint_id else None,
            "state": j.state,
            "progress": max(0.0, min(1.0, j.progress or 0.0)),
            "progress_msg": j.progress_msg,
            "error": split_error(j.error)[0],
            "attempts": j.attempts,
        }
        for j in shown
    ]
    jobs.sort(key=lambda j: (["running", "queued", "failed"].index(j["state"]), -j["id"]))
    active = sum(counts.get(s, 0) for s in ACTIVE)
    return {
        "counts": counts,
        "active": active,
        "done": counts.get("done", 0),
        "total": sum(counts.values()),
        "jobs": jobs,
        "eta": eta_rows(session, run_id) if active else [],
        "by_kind": jobs_by_kind(session, run_id) if active else {},
        "lenses": lens_states(session, run_id),  # waiting, not applicable, ... per lens
    }


def jobs_by_kind(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """Per kind: jobs per state and the mean progress of the running ones (the plot cards
    say what is running while their results are still missing)."""
    out: dict[str, dict[str, Any]] = {}
    rows = session.execute(
        select(Job.kind, Job.state, func.count(), func.avg(Job.progress))
        .where(Job.run_id == run_id)
        .group_by(Job.kind, Job.state)
    ).all()
    for kind, state, n, progress in rows:
        entry = out.setdefault(kind, {"queued": 0, "running": 0, "done": 0, "failed": 0})
        entry[state] = int(n)
        if state == "running":
            entry["progress"] = float(progress or 0.0)
    return out


def eta_rows(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Time to completion per kind, from the stored measured throughput (jobs.throughput)."""
    from phaseboard.server.jobs.throughput import eta_by_kind, format_eta

    return [
        {
            "kind": kind,
            "jobs": e["jobs"],
            "text": format_eta(e["seconds"]),
            "seconds": e["seconds"],
            "rate": e["rate"],
        }
        for kind, e in eta_by_kind(session, run_id).items()
    ]


def boundaries(session: Session, run_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(PhaseBoundary)
        .where(PhaseBoundary.run_id == run_id)
        .order_by(PhaseBoundary.step, PhaseBoundary.id)
    ).all()
    return [boundary_dict(b) for b in rows]


def boundary_dict(b: PhaseBoundary) -> dict[str, Any]:
    return {
        "id": b.id,
        "run_id": b.run_id,
        "step": b.step,
        "source": b.source,
        "kind": b.kind,
        "score": b.score,
        "label": b.label,
        "manual": b.manual,
    }


def plot_data(
    session: Session, run_id: int, max_points: int = 2000, llc_settings: str | None = None
) -> dict[str, Any]:
    """Everything the plots of one run need, in one response.

    ``series``: logged metric points (downsampled to at most ``max_points`` each by
    ``server.series_store.read_series``, the same min/max buckets as ``/series``) and the
    scalars of per-checkpoint ``metrics`` results (prefixed ``ckpt/``); ``llc``: mean, std,
    verdict, n_beta and result id per checkpoint of one LLC settings series (``llc_settings``,
    default the run's current; see ``server.web.llc_series``); ``restricted``: the same per
    restriction; ``boundaries``: phase boundaries.
    """
    run = get_run(session, run_id)
    series: dict[str, dict[str, list[float]]] = {}
    for name in series_names(session, run_id):
        steps, values, total = read_series(session, run_id, name, max_points)
        step_list = steps.tolist()
        series[name] = {
            "step": step_list,
            "value": values.tolist(),
            "count": total,
            "wall": read_wall_times(session, run_id, name, step_list),  # x = wall/relative time
        }

    ckpt_metrics: dict[str, dict[str, list[float]]] = {}
    for step, values in session.execute(
        select(Result.step, Result.values)
        .where(Result.run_id == run_id, Result.kind == "metrics", Result.step.is_not(None))
        .order_by(Result.step)
    ):
        for key, value in scalar_values(values).items():
            if not math.isfinite(value):
                continue
            s = ckpt_metrics.setdefault(f"ckpt/{key}", {"step": [], "value": []})
            s["step"].append(step)
            s["value"].append(value)
    for key, s in ckpt_metrics.items():
        s["count"] = len(s["step"])  # type: ignore[assignment]
        series[key] = s

    from phaseboard.server.web.llc_series import llc_series

    llc_part = llc_series(session, run, llc_settings)
    return {
        "run": {"id": run.id, "name": run.name, "task": run.task},
        "series": dict(sorted(series.items())),
        **llc_part,
        "boundaries": boundaries(session, run_id),
        "checks": series_checks(session, run_id),  # duplicate steps are marked on the plots
    }


def run_choices(session: Session) -> list[dict[str, Any]]:
    """Every run's id and name, by name: the compare page's picker needs nothing more."""
    rows = session.execute(select(Run.id, Run.name)).all()
    return [{"id": i, "name": n} for i, n in sorted(rows, key=lambda r: r.name.lower())]


def tagged_runs(session: Session, tag: str) -> tuple[list[int], list[str]]:
    """Ids of the runs carrying ``tag`` (by name), and every tag in use (sorted)."""
    rows = session.execute(select(Run.id, Run.name, Run.tags)).all()
    ids = [i for i, n, tags in sorted(rows, key=lambda r: r.name.lower()) if tag in (tags or [])]
    return (ids if tag else []), sorted({t for *_, tags in rows for t in tags or []})


def runs_by_ids(session: Session, ids: list[int]) -> list[dict[str, Any]]:
    """The runs named in a compare view, in the order given; unknown ids are skipped."""
    found = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(ids)))}
    return [run_dict(found[i]) for i in ids if i in found]
