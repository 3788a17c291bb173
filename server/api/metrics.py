"""Metric series: bulk upsert of ``{step, name, value}`` points and downsampled reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from phaseboard.server import read
from phaseboard.server.deps import RunDep, SessionDep, SettingsDep, WriteAuth
from phaseboard.server.errors import NotFound, PayloadTooLarge
from phaseboard.server.models import MetricPoint
from phaseboard.server.schemas import DbId, MetricIn, MetricsAccepted, SeriesName, SeriesOut, Text
from phaseboard.server.series_store import (
    read_series,
    read_wall_times,
    replaced_extremes,
    series_extremes,
    upsert_points,
)
from phaseboard.server.tracking import merge_summary, with_extremes

router = APIRouter(tags=["metrics"])


@router.post("/runs/{run_id}/metrics", dependencies=[WriteAuth])
def add_metrics(
    run_id: DbId, points: list[MetricIn], session: SessionDep, settings: SettingsDep
) -> MetricsAccepted:
    """Add points; a point at an existing (name, step) replaces its value (upsert).

    Values must be finite numbers (null, NaN and inf are refused with the point's index).
    At most ``PHASEBOARD_MAX_METRIC_POINTS`` points per request (413 past it): send more
    in several requests, as the client (``import phaseboard``) does.
    """
    if len(points) > settings.max_metric_points:
        raise PayloadTooLarge(
            f"{len(points)} points in one request; this server takes at most "
            f"{settings.max_metric_points} per request (PHASEBOARD_MAX_METRIC_POINTS): "
            "send them in batches; nothing was stored"
        )
    run = read.get_run(session, run_id, lock=True)
    latest: dict[tuple[str, int], tuple[float, float | None]] = {}
    for p in points:  # within one request the last value for a (name, step) wins
        latest[(p["name"], p["step"])] = (p["value"], p.get("wall_time"))
    rows = [(n, s, v) for (n, s), (v, _) in latest.items()]
    stale = replaced_extremes(session, run_id, run.summary or {}, rows)
    upsert_points(session, run_id, [(n, s, v, w) for (n, s), (v, w) in latest.items()])
    run.summary = with_extremes(
        merge_summary(run.summary, rows), series_extremes(session, run_id, stale)
    )
    session.commit()
    return MetricsAccepted(accepted=len(points), names=sorted({n for n, _ in latest}))


@router.get("/runs/{run_id}/series")
def get_series(
    run: RunDep,
    session: SessionDep,
    name: Annotated[Text, Query(min_length=1, max_length=200)],
    max_points: Annotated[int, Query(ge=10, le=200_000)] = 2000,
    wall_time: Annotated[
        bool, Query(description="Also return each point's wall time (Unix seconds).")
    ] = False,
) -> SeriesOut:
    """One series, downsampled to at most ``max_points`` keeping per-bucket min and max."""
    steps, values, total = read_series(session, run.id, name, max_points)
    if total == 0:
        raise NotFound(f"run {run.id} has no series named {name!r}")
    step_list = steps.tolist()
    return SeriesOut(
        name=name,
        steps=step_list,
        values=values.tolist(),
        total_points=total,
        downsampled=len(steps) < total,
        wall_times=read_wall_times(session, run.id, name, step_list) if wall_time else None,
    )


@router.get("/runs/{run_id}/series/names")
def series_names(run: RunDep, session: SessionDep) -> list[SeriesName]:
    """The run's series with their point counts and step ranges."""
    rows = session.execute(
        select(
            MetricPoint.name, func.count(), func.min(MetricPoint.step), func.max(MetricPoint.step)
        )
        .where(MetricPoint.run_id == run.id)
        .group_by(MetricPoint.name)
        .order_by(MetricPoint.name)
    )
    return [SeriesName(name=n, points=c, first_step=a, last_step=b) for n, c, a, b in rows]
