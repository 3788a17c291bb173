"""Everything the plots of one run need, in one response (``GET /api/runs/{id}/plotdata``)."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session

from phaseboard.server.read.boundaries import boundaries
from phaseboard.server.read.llc_series import llc_series
from phaseboard.server.read.results import metric_points
from phaseboard.server.read.runs import get_run
from phaseboard.server.series_store import read_series, read_wall_times, series_names
from phaseboard.server.store.series_checks import series_checks


def plot_data(
    session: Session, run_id: int, max_points: int = 2000, llc_settings: str | None = None
) -> dict[str, Any]:
    """Everything the plots of one run need, in one response.

    ``series``: logged metric points (downsampled to at most ``max_points`` each by
    ``server.series_store.read_series``, the same min/max buckets as ``/series``) and the
    scalars of per-checkpoint ``metrics`` results (prefixed ``ckpt/``; the newest result of a
    checkpoint, finite values only); ``llc``: mean, std, verdict, n_beta and result id per
    checkpoint of one LLC settings series (``llc_settings``, default the run's current; see
    ``server.read.llc_series``); ``restricted``: the same per restriction; ``boundaries``:
    stage boundaries; ``checks``: the series checks (duplicate weights, missing steps).
    """
    run = get_run(session, run_id)
    series: dict[str, dict[str, Any]] = {}
    for name in series_names(session, run_id):
        steps, values, total = read_series(session, run_id, name, max_points)
        step_list = steps.tolist()
        series[name] = {
            "step": step_list,
            "value": values.tolist(),
            "count": total,
            "wall": read_wall_times(session, run_id, name, step_list),  # x = wall/relative time
        }

    for key, points in metric_points(session, run_id).items():
        steps = [step for step, value in points.items() if math.isfinite(value)]
        if steps:
            series[f"ckpt/{key}"] = {
                "step": steps,
                "value": [points[step] for step in steps],
                "count": len(steps),
            }

    llc_part = llc_series(session, run, llc_settings)
    return {
        "run": {"id": run.id, "name": run.name, "task": run.task},
        "series": dict(sorted(series.items())),
        **llc_part,
        "boundaries": boundaries(session, run_id),
        "checks": series_checks(session, run_id),  # duplicate steps are marked on the plots
    }
