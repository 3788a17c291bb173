"""Metric points in SQL: bulk upsert and downsampled reads, fast on SQLite and PostgreSQL.

Both read paths return exactly what ``server.series.downsample_minmax`` would return for the
whole series (per-bucket min and max, earliest step on ties, first and last point), but
compute it in the database so 10^6 points never cross into Python. The covering index
``ix_metric_series_values`` on (run_id, name, step, value) makes every read index-only.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from phaseboard.server.models import MetricPoint
from phaseboard.server.series import n_buckets

__all__ = [
    "read_series",
    "read_wall_times",
    "replaced_extremes",
    "series_extremes",
    "series_names",
    "upsert_points",
]

_UPSERT_SQLITE = (
    "INSERT INTO metric_points (run_id, name, step, value, wall_time) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (run_id, name, step) DO UPDATE SET value = excluded.value, "
    "wall_time = excluded.wall_time"
)


def upsert_points(
    session: Session,
    run_id: int,
    rows: list[tuple[str, int, float]] | list[tuple[str, int, float, float | None]],
) -> None:
    """Upsert ``(name, step, value[, wall_time])`` rows on (run, name, step), fast on both backends.

    A missing (or None) wall time is the server's time now. SQLite: one prepared statement,
    executemany. PostgreSQL: COPY into a temp table, then one
    ``INSERT .. SELECT .. ON CONFLICT DO UPDATE``. Rows must be unique on (name, step).
    """
    if not rows:
        return
    now = time.time()
    full = [(r[0], r[1], r[2], r[3] if len(r) > 3 and r[3] is not None else now) for r in rows]
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(_UPSERT_SQLITE, [(run_id, *r) for r in full])
        return
    from psycopg import sql

    raw = conn.connection.driver_connection
    tmp = sql.Identifier(f"metric_in_{uuid.uuid4().hex[:12]}")
    with raw.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (name text, step bigint, value float8, wall_time float8) "
                "ON COMMIT DROP"
            ).format(tmp)
        )
        copy_sql = sql.SQL("COPY {} (name, step, value, wall_time) FROM STDIN").format(tmp)
        with cur.copy(copy_sql) as copy:
            for row in full:
                copy.write_row(row)
        cur.execute(
            sql.SQL(
                "INSERT INTO metric_points (run_id, name, step, value, wall_time) "
                "SELECT {}, name, step, value, wall_time FROM {} "
                "ON CONFLICT (run_id, name, step) DO UPDATE SET value = EXCLUDED.value, "
                "wall_time = EXCLUDED.wall_time"
            ).format(sql.Literal(run_id), tmp)
        )


def replaced_extremes(
    session: Session, run_id: int, summary: dict[str, Any], rows: list[tuple[str, int, float]]
) -> list[str]:
    """Series whose summary min or max is a stored value that ``rows`` (about to be upserted)
    replace with a different one: their extremes must be read again after the upsert.

    Only points at or before a series' last step can replace anything, so appending (what
    a training loop does) costs no query; a re-logged step costs one indexed lookup.
    """
    candidates: dict[str, dict[int, float]] = {}
    for name, step, value in rows:
        s = summary.get(name)
        if isinstance(s, dict) and step <= s.get("last_step", -1):
            candidates.setdefault(name, {})[step] = value
    stale = []
    for name, new in candidates.items():
        lo, hi = summary[name].get("min"), summary[name].get("max")
        steps = list(new)
        for i in range(0, len(steps), 1000):  # well under every backend's parameter limit
            old = session.execute(
                select(MetricPoint.step, MetricPoint.value).where(
                    MetricPoint.run_id == run_id,
                    MetricPoint.name == name,
                    MetricPoint.step.in_(steps[i : i + 1000]),
                )
            ).all()
            if any((v == lo and new[st] > v) or (v == hi and new[st] < v) for st, v in old):
                stale.append(name)
                break
    return stale


def series_extremes(
    session: Session, run_id: int, names: list[str]
) -> dict[str, tuple[float, float]]:
    """``{name: (min, max)}`` over every stored point (index-only on the covering index)."""
    if not names:
        return {}
    rows = session.execute(
        select(MetricPoint.name, func.min(MetricPoint.value), func.max(MetricPoint.value))
        .where(MetricPoint.run_id == run_id, MetricPoint.name.in_(names))
        .group_by(MetricPoint.name)
    ).all()
    return {name: (float(lo), float(hi)) for name, lo, hi in rows}


_WHERE = "FROM metric_points WHERE run_id = :run AND name = :name"

# One pass of a hash aggregate: min over ARRAY[value, step] is the lowest value with the
# earliest step on ties; max over ARRAY[value, -step] the highest with the earliest step.
_PG_BUCKETS = text(
    "SELECT count(*), min(ARRAY[value, step::float8]), max(ARRAY[value, -step::float8]) "
    f"{_WHERE} GROUP BY (step - :lo) * :nb / :span"
)
# The same buckets in numeric, for a span so wide that (step - lo) * nb would overflow bigint
# (steps go up to 2^53 - 1, nb to 10^5): exact integer division, a little slower.
_PG_BUCKETS_WIDE = text(
    "SELECT count(*), min(ARRAY[value, step::float8]), max(ARRAY[value, -step::float8]) "
    f"{_WHERE} GROUP BY div((step - :lo)::numeric * :nb, :span)"
)
_INT64_MAX = 2**63 - 1


def read_series(
    session: Session, run_id: int, name: str, max_points: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(steps, values, total_points)`` of a series, downsampled to ``max_points``."""
    conn = session.connection()
    key = {"run": run_id, "name": name}
    short = conn.execute(
        text(f"SELECT count(*) FROM (SELECT 1 {_WHERE} LIMIT :cap) AS t"),
        {**key, "cap": max_points + 1},
    ).scalar_one()
    if short <= max_points:  # nothing to downsample: the rows as they are
        rows = conn.execute(text(f"SELECT step, value {_WHERE} ORDER BY step"), key).all()
        arr = np.array(rows, dtype=np.float64).reshape(-1, 2)
        return arr[:, 0].astype(np.int64), arr[:, 1], len(rows)
    ends = [
        conn.execute(text(f"SELECT step, value {_WHERE} ORDER BY step {order} LIMIT 1"), key).one()
        for order in ("ASC", "DESC")
    ]
    (lo, _), (hi, _) = ends
    picked: dict[int, float] = dict(ends)
    bounds = (lo, n_buckets(max_points), hi - lo + 1)
    if conn.dialect.name == "postgresql":  # steps < MAX_STEP are exact as float8
        total = _buckets_postgresql(conn, key, bounds, picked)
    else:
        total = _buckets_sqlite(conn, key, bounds, picked)
    steps = np.array(sorted(picked), dtype=np.int64)
    values = np.array([picked[s] for s in steps.tolist()], dtype=np.float64)
    return steps, values, total


def _buckets_postgresql(
    conn: Connection, key: dict, bounds: tuple[int, int, int], picked: dict[int, float]
) -> int:
    """Add each bucket's extremes to ``picked``; return the number of points."""
    lo, nb, span = bounds
    # At most nb groups: a small hash table always beats sorting 10^6 rows, which the planner
    # picks when its statistics lag a bulk load; and JIT compiling costs more than it saves.
    conn.exec_driver_sql("SET LOCAL enable_sort = off; SET LOCAL jit = off")
    try:
        query = _PG_BUCKETS if span * nb <= _INT64_MAX else _PG_BUCKETS_WIDE
        rows = conn.execute(query, {**key, "lo": lo, "nb": nb, "span": span}).all()
    finally:
        conn.exec_driver_sql("RESET enable_sort; RESET jit")
    for _, low, high in rows:
        picked[int(low[1])] = low[0]
        picked[-int(high[1])] = high[0]
    return sum(count for count, _, _ in rows)


def _buckets_sqlite(
    conn: Connection, key: dict, bounds: tuple[int, int, int], picked: dict[int, float]
) -> int:
    """Add each bucket's extremes to ``picked``; return the number of points.

    One index range scan per bucket and extreme: SQLite's bare-column rule makes
    ``SELECT step, min(value)`` return the step of the row holding the minimum (the first
    such row in index order, i.e. the earliest step).
    """
    lo, nb, span = bounds
    # Bucket b holds steps in [edge_b, edge_b+1), edge_b = lo + ceil(b * span / nb): the
    # inverse of ``bucket = (step - lo) * nb // span``.
    edges = [lo + -(-b * span // nb) for b in range(nb + 1)]
    where = "FROM metric_points WHERE run_id = ? AND name = ? AND step >= ? AND step < ?"
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(
            "SELECT count(*) FROM metric_points WHERE run_id = ? AND name = ?",
            (key["run"], key["name"]),
        )
        (total,) = cur.fetchone()
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            if a >= b:
                continue
            for agg in ("min", "max"):
                cur.execute(f"SELECT step, {agg}(value) {where}", (key["run"], key["name"], a, b))
                step, value = cur.fetchone()
                if step is not None:
                    picked[step] = value
    finally:
        cur.close()
    return total


_SERIES_NAMES = text(
    """
    WITH RECURSIVE names(name) AS (
        SELECT min(name) FROM metric_points WHERE run_id = :run
        UNION ALL
        SELECT (SELECT min(name) FROM metric_points WHERE run_id = :run AND name > names.name)
        FROM names WHERE names.name IS NOT NULL
    )
    SELECT name FROM names WHERE name IS NOT NULL
    """
)


def series_names(session: Session, run_id: int) -> list[str]:
    """A run's metric names by index jumps (one seek per name, not a scan of every point)."""
    return list(session.scalars(_SERIES_NAMES, {"run": run_id}))


def read_wall_times(
    session: Session, run_id: int, name: str, steps: list[int]
) -> list[float | None]:
    """The wall time of each of ``steps`` of a series (None where unknown).

    One unique-index seek per step (``step IN (...)``, chunked), so a downsampled plot of a
    10^6-point series reads only the points it shows.
    """
    from sqlalchemy import select

    from phaseboard.server.models import MetricPoint

    found: dict[int, float | None] = {}
    for i in range(0, len(steps), 5000):
        chunk = steps[i : i + 5000]
        stmt = select(MetricPoint.step, MetricPoint.wall_time).where(
            MetricPoint.run_id == run_id, MetricPoint.name == name, MetricPoint.step.in_(chunk)
        )
        found.update((step, wall) for step, wall in session.execute(stmt))
    return [found.get(s) for s in steps]
