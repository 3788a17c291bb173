"""The runs table: every run as a plain row (with config, summary and status), then filtered,
grouped, sorted and cut to a page in Python.

A row's ``config`` is the run's config (hyperparameters the client or an import recorded)
plus, under ``task``, the task config's settings (``task_config_fields``), so
``config.task.p`` or ``config.task.lr`` can be filtered, sorted and grouped like the rest.

One query reads the run columns the table needs (no ORM objects), two grouped queries add
checkpoint and job counts; the filter language (``server.run_filter``) runs on the rows, so
it behaves the same on SQLite and PostgreSQL and no user text reaches SQL. 10,000 runs stay
well under the 300 ms budget (``bench/runs_list.py``).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, String, cast, func, select, true
from sqlalchemy.orm import Session

from phaseboard.server.db import name_contains
from phaseboard.server.jobs.lifecycle import ACTIVE
from phaseboard.server.models import Checkpoint, Job, Run
from phaseboard.server.run_filter import FilterError, field_value, parse_field, parse_filter
from phaseboard.server.tracking import STATUSES, effective_status

__all__ = ["RunsTable", "matching_ids", "parse_columns", "runs_table"]

MAX_COLUMNS = 20


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_columns(text: str) -> list[str]:
    """``"config.lr, summary.loss.min"`` -> the valid, de-duplicated column names."""
    out: list[str] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part or part in out:
            continue
        parse_field(part)  # raises FilterError on a bad name
        out.append(part)
    if len(out) > MAX_COLUMNS:
        raise FilterError(f"cols: at most {MAX_COLUMNS} columns")
    return out


class RunsTable(dict[str, Any]):
    """The table's context: rows, total, groups, available columns (a dict for templates)."""


# Task-config keys left out of the table: a whole model config (its architecture is under
# config.model for imports) or data too large for a column.
TASK_CONFIG_SKIP = frozenset({"hf_config", "tl_config", "kwargs"})


def task_config_fields(task_config: Any) -> dict[str, Any]:
    """The task config's scalar settings (numbers, strings, booleans) and its short lists
    of scalars, as the runs table shows them under ``config.task``."""
    if not isinstance(task_config, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in task_config.items():
        if key in TASK_CONFIG_SKIP or value is None:
            continue
        if isinstance(value, bool | int | float | str) or (
            isinstance(value, list)
            and len(value) <= 8
            and all(isinstance(v, bool | int | float | str) for v in value)
        ):
            out[key] = value
    return out


def _row_config(config: Any, task_config: Any) -> dict[str, Any]:
    """The run's config with its task config's settings under ``task`` (a run config that
    has its own ``task`` key keeps it)."""
    out = dict(config or {})
    fields = task_config_fields(task_config)
    if fields and "task" not in out:
        out["task"] = fields
    return out


def _column_choices(rows: list[dict[str, Any]], limit: int = 200) -> list[str]:
    """Config keys (nested joined with '.') and summary stats seen in the rows."""
    config_keys: set[str] = set()
    series: set[str] = set()

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                config_keys.add(f"{prefix}{k}")

    for r in rows[:500]:  # a sample is enough to offer the common keys
        walk(r.get("config") or {}, "")
        series.update((r.get("summary") or {}).keys())
    cols = [f"config.{k}" for k in sorted(config_keys)]
    for s in sorted(series):
        cols += [f"summary.{s}.last", f"summary.{s}.min", f"summary.{s}.max"]
    return cols[:limit]


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before strings before missing values, each ordered naturally."""
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    if value is None or value == []:
        return (3, "")
    return (1, str(value).lower())


def runs_table(
    session: Session,
    *,
    crashed_after_s: float,
    q: str = "",
    tag: str = "",
    task: str = "",
    status: str = "",
    filter: str = "",
    sort: str = "activity",
    group: str = "",
    cols: str = "",
    limit: int = 200,
    offset: int = 0,
) -> RunsTable:
    """Rows of the runs table; raises ``FilterError`` (422) for a bad filter/sort/column."""
    predicate = parse_filter(filter)
    columns = parse_columns(cols)
    group_field = parse_field(group) if group else None
    desc = sort.startswith("-")
    sort_name = sort.lstrip("-")
    sort_field = parse_field(sort_name) if sort_name.startswith(("config.", "summary.")) else None
    if status and status not in STATUSES:
        raise FilterError(f"status: unknown {status!r}; use one of {', '.join(STATUSES)}")

    seen: dict[str, set[str]] = {"tags": set(), "tasks": set()}
    rows = _matching_rows(session, crashed_after_s, q, task, tag, status, predicate, seen)

    # Last activity (the default order) and checkpoint counts need every run's counts;
    # any other order needs them only for the rows shown.
    page_only = sort_name not in ("activity", "checkpoints") and (
        sort_name in ("name", "created", "status") or sort_field is not None
    )
    if not page_only:
        _add_counts(session, rows)
    if sort_field is not None:
        keyed = [(field_value(r, sort_field), r) for r in rows]
        present = [(v, r) for v, r in keyed if v is not None]
        present.sort(key=lambda vr: _sort_key(vr[0]), reverse=desc)
        rows = [r for _, r in present] + [r for v, r in keyed if v is None]
    elif sort_name == "name":
        rows.sort(key=lambda r: r["name"].lower(), reverse=desc)
    elif sort_name == "created":
        rows.sort(key=lambda r: _aware(r["created_at"]), reverse=not desc)
    elif sort_name == "checkpoints":
        rows.sort(key=lambda r: (r["checkpoints"], r["name"]), reverse=not desc)
    elif sort_name == "status":
        rows.sort(key=lambda r: (r["status"], r["name"]), reverse=desc)
    else:
        rows.sort(key=lambda r: r["last_activity"], reverse=not desc)

    groups: list[dict[str, Any]] = []
    if group_field is not None:
        counts: dict[str, int] = {}
        for r in rows:
            v = field_value(r, group_field)
            key = "–" if v is None else str(v)
            counts[key] = counts.get(key, 0) + 1
        groups = [{"value": k, "count": n} for k, n in sorted(counts.items())]
    if page_only:
        _add_counts(session, rows[offset : offset + limit])
    fields = [parse_field(c) for c in columns]
    for r in rows[offset : offset + limit]:
        r["cells"] = [field_value(r, f) for f in fields]
    return RunsTable(
        runs=rows[offset : offset + limit],
        total=len(rows),
        columns=columns,
        column_choices=_column_choices(rows),
        groups=groups,
        all_tags=sorted(seen["tags"]),
        all_tasks=sorted(seen["tasks"]),
    )


def _matching_rows(
    session: Session,
    crashed_after_s: float,
    q: str,
    task: str,
    tag: str,
    status: str,
    predicate: Any,
    seen: dict[str, set[str]] | None = None,
) -> list[dict[str, Any]]:
    # The version token is updated_at as the database stores it (no datetime parsing).
    stmt = select(Run.id, cast(Run.updated_at, String))
    if q:
        stmt = stmt.where(name_contains(Run.name, q))
    if task:
        stmt = stmt.where(Run.task == task)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    tags, tasks = (seen["tags"], seen["tasks"]) if seen is not None else (set(), set())
    for cached in _cached_rows(session, session.execute(stmt).all()):
        row_tags = cached["tags"]
        if row_tags:
            tags.update(row_tags)
        tasks.add(cached["task"])
        if tag and tag not in row_tags:
            continue
        st = cached["status"]
        if st == "running":  # only running runs can have gone quiet
            st = effective_status(_RowRun(cached), crashed_after_s, now)  # type: ignore[arg-type]
        if status and st != status:
            continue
        # The cache's rows are shared: a request reads them and copies only those it keeps.
        view = cached if st == cached["status"] else {**cached, "status": st}
        if not predicate(view):
            continue
        row = dict(view)
        row["status"] = st
        rows.append(row)
    tasks.discard(None)
    return rows


def matching_ids(
    session: Session,
    *,
    crashed_after_s: float,
    q: str = "",
    task: str = "",
    tag: str = "",
    status: str = "",
    filter: str = "",
) -> set[int]:
    """Ids of the runs that pass the filters (for the JSON API's own ordering and paging)."""
    predicate = parse_filter(filter)
    rows = _matching_rows(session, crashed_after_s, q, task, tag, status, predicate)
    return {r["id"] for r in rows}


_COLUMNS = (
    Run.id,
    Run.name,
    Run.task,
    Run.tags,
    Run.notes,
    Run.config,
    Run.task_config,
    Run.summary,
    Run.status,
    Run.heartbeat_at,
    Run.created_at,
    Run.updated_at,
)
# {engine url: {run id: row}}: decoded run rows, reused while the run's ``updated_at`` holds.
# Every change of a run row goes through the ORM, whose ``onupdate`` bumps ``updated_at``
# (metric ingest rewrites the summary, heartbeats the status), so a stale entry is refetched.
# Decoding 10^4 rows of JSON costs more than the whole 300 ms budget on a busy machine.
_CACHE: dict[str, dict[int, dict[str, Any]]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 200_000


def _cached_rows(session: Session, current: list[Any]) -> list[dict[str, Any]]:
    """The decoded rows of the runs ``current`` ((id, version) pairs), in that order."""
    key = str(session.get_bind().url)
    versions = dict(current)
    with _CACHE_LOCK:
        cache = _CACHE.setdefault(key, {})
        if len(cache) > _CACHE_MAX:
            cache.clear()
        stale = [rid for rid, v in current if (c := cache.get(rid)) is None or c["_version"] != v]
    for i in range(0, len(stale), 1000):
        fresh = session.execute(select(*_COLUMNS).where(Run.id.in_(stale[i : i + 1000])))
        decoded = {}
        for r in fresh.mappings():
            row = dict(r)
            row["tags"] = list(row["tags"] or [])
            row["config"] = _row_config(row["config"], row.pop("task_config"))
            row["summary"] = row["summary"] or {}
            row["_version"] = versions[row["id"]]
            decoded[row["id"]] = row
        with _CACHE_LOCK:
            cache.update(decoded)
    with _CACHE_LOCK:
        return [cache[rid] for rid, _ in current if rid in cache]


class _RowRun:
    """The two attributes ``effective_status`` reads, from a row dict."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.status = row["status"]
        self.heartbeat_at = row["heartbeat_at"]
        self.created_at = row["created_at"]


def _ids_clause(column: Any, rows: list[dict[str, Any]]) -> Any:
    """``column IN (ids)`` for a page of rows; no condition (all runs) for a long list."""
    return column.in_([r["id"] for r in rows]) if len(rows) <= 1000 else true()


def _add_counts(session: Session, rows: list[dict[str, Any]]) -> None:
    """Checkpoint and job counts and last activity, for all runs in two grouped queries."""
    ckpt = {
        rid: (n, last)
        for rid, n, last in session.execute(
            select(Checkpoint.run_id, func.count(Checkpoint.id), func.max(Checkpoint.created_at))
            .where(_ids_clause(Checkpoint.run_id, rows))
            .group_by(Checkpoint.run_id)
        )
    }
    jobs = {
        rid: (n, int(active or 0), int(failed or 0), last)
        for rid, n, active, failed, last in session.execute(
            select(
                Job.run_id,
                func.count(Job.id),
                func.sum(cast(Job.state.in_(ACTIVE), Integer)),
                func.sum(cast(Job.state == "failed", Integer)),
                func.max(func.coalesce(Job.finished_at, Job.started_at, Job.created_at)),
            )
            .where(_ids_clause(Job.run_id, rows))
            .group_by(Job.run_id)
        )
    }
    for row in rows:
        n_ckpt, ckpt_last = ckpt.get(row["id"], (0, None))
        n_jobs, active, failed, job_last = jobs.get(row["id"], (0, 0, 0, None))
        stamps = (row["updated_at"], row["created_at"], ckpt_last, job_last, row["heartbeat_at"])
        times = [_aware(t) for t in stamps if t is not None]
        row.update(
            checkpoints=n_ckpt,
            jobs=n_jobs,
            jobs_active=active,
            jobs_failed=failed,
            last_activity=max(times),
        )
