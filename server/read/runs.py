"""Runs as the pages and the JSON routes read them: one run (or 404), the runs table's
context, and the run lists of the compare page."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.db import get_existing
from phaseboard.server.models import Run

# The arguments of ``list_runs`` a runs page address carries (a share link's view too).
RUNS_TABLE_QUERY = ("q", "tag", "task", "sort", "status", "filter", "group", "cols")
RUN_SORTS = {
    "activity": "last activity",
    "name": "name",
    "created": "created",
    "checkpoints": "checkpoints",
    "status": "status",
}


def get_run(session: Session, run_id: int, lock: bool = False) -> Run:
    """The run, or ``NotFound`` (a 404); ``lock`` holds its row (PostgreSQL) for a
    read-modify-write."""
    if lock:
        run = session.get(Run, run_id, with_for_update=True)
        if run is not None:
            return run
    return get_existing(session, Run, run_id, "run")


def run_dict(run: Run, crashed_after_s: float = 120.0) -> dict[str, Any]:
    """The run as the pages show it, its status as of now (``crashed`` once stale)."""
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
