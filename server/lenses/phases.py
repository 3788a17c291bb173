"""The ``phases`` lens: per run, re-detect stage boundaries from the run's current results
(``analysis.phases.detect_boundaries``): critical points of the LLC curve, change points of
the loss curves, and the candidates other lenses leave (essential-dynamics turning points,
jumps of the progress measures). Manual boundaries are kept.

Its jobs are keyed by a fingerprint of the results of the lenses that feed it
(``Lens.feeds_phases``), so a new result means new work and the same results are never
analysed twice; the runner queues it when such a lens finishes.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

from phaseboard.server.jobs.handlers import JobContext, ResultRows
from phaseboard.server.lenses._registry import Lens, LensView
from phaseboard.server.models import Checkpoint, Job, MetricPoint, PhaseBoundary, Result, utcnow
from phaseboard.server.series_store import series_names


def run_phases(ctx: JobContext) -> ResultRows:
    """Re-detect boundaries from the run's LLC and loss curves; manual ones are kept."""
    from phaseboard.analysis.phases import detect_boundaries
    from phaseboard.server.jobs.planning import llc_settings, llc_settings_hash

    current = llc_settings_hash(llc_settings(ctx.run()))
    with ctx.db.session() as s:
        llc_rows = s.execute(
            sa.select(Result.step, Result.values, Job.config_hash)
            .join(Job, Job.id == Result.job_id, isouter=True)
            .where(Result.run_id == ctx.run_id, Result.kind == "llc", Result.restriction == "")
            .order_by(Result.step, Result.id)
        ).all()
        ckpt_steps = sorted(
            int(x)
            for x in s.scalars(sa.select(Checkpoint.step).where(Checkpoint.run_id == ctx.run_id))
        )
        loss_names = [n for n in series_names(s, ctx.run_id) if "loss" in n]
        points = s.execute(  # only the loss series: a run may log 10^6 points of others
            sa.select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
            .where(MetricPoint.run_id == ctx.run_id, MetricPoint.name.in_(loss_names))
            .order_by(MetricPoint.name, MetricPoint.step)
        ).all()
        metric_rows = s.execute(
            sa.select(Result.step, Result.values)
            .where(Result.run_id == ctx.run_id, Result.kind == "metrics")
            .order_by(Result.step, Result.id)
        ).all()
    llc_by_step: dict[int, dict[str, Any]] = {}
    for step, values, job_hash in llc_rows:  # newest result per step wins
        key = values.get("settings_hash") or job_hash  # None: stored without a job
        if key is None or key == current:
            llc_by_step[int(step)] = values
    # Only estimates whose verdict is ok (results from before verdicts: a finite mean);
    # every other checkpoint is a gap the detector must not bridge.
    steps = sorted(
        k
        for k, v in llc_by_step.items()
        if v.get("mean") is not None and v.get("verdict", "ok") == "ok" and k > 0
    )
    breaks = [k for k in ckpt_steps if k > 0 and k not in set(steps)]
    llc = [float(llc_by_step[k]["mean"]) for k in steps]
    llc_std = [float(llc_by_step[k].get("std", 0.0) or 0.0) for k in steps]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name, step, value in points:
        if "loss" in name and value is not None and math.isfinite(value) and step > 0:
            xs, ys = series.setdefault(name, ([], []))
            xs.append(float(step))
            ys.append(float(value))
    if not series:  # no logged losses: fall back to the checkpoint metrics
        per_step: dict[int, dict[str, Any]] = {int(st): v for st, v in metric_rows}
        for st in sorted(per_step):
            for name, value in per_step[st].items():
                if name.endswith("_loss") and value is not None and st > 0:
                    xs, ys = series.setdefault(name, ([], []))
                    xs.append(float(st))
                    ys.append(float(value))
    ctx.progress(0, 1, f"detecting boundaries on {len(steps)} LLC points")
    found = detect_boundaries(
        steps, llc, llc_std, series, llc_breaks=breaks, extra=_lens_boundaries(ctx)
    )
    boundaries = [
        {
            "step": float(b.step),
            "source": str(b.source)[:100],  # merged sources "llc+loss:a+...", column of 100
            "kind": str(b.kind),
            "score": float(b.score),
            "label": str(b.label or ""),
        }
        for b in found
    ]
    with ctx.db.session() as s:
        s.execute(
            sa.delete(PhaseBoundary).where(
                PhaseBoundary.run_id == ctx.run_id, PhaseBoundary.manual.is_(False)
            )
        )
        for b in boundaries:
            s.add(PhaseBoundary(run_id=ctx.run_id, manual=False, created_at=utcnow(), **b))
    values = {"boundaries": boundaries, "llc_points": len(steps), "llc_gaps": len(breaks)}
    return [{"restriction": "", "values": values}]


def _lens_boundaries(ctx: JobContext) -> list[Any]:
    """Boundary candidates other lenses left: the ``turning_points`` of the newest result of
    each run-scope lens that feeds phases (essential dynamics), and the jumps of the
    progress measures in the metrics results."""
    from phaseboard.analysis.phases import Boundary
    from phaseboard.server.lenses._registry import all_lenses

    feeding = [lens.name for lens in all_lenses() if lens.feeds_phases and lens.scope == "run"]
    out = []
    with ctx.db.session() as s:
        for name in feeding:
            values = s.scalar(
                sa.select(Result.values)
                .where(Result.run_id == ctx.run_id, Result.kind == name)
                .order_by(Result.id.desc())
                .limit(1)
            )
            for b in (values or {}).get("turning_points", []):
                out.append(
                    Boundary(float(b["step"]), b["source"], b["kind"], float(b["score"]), "")
                )
    return out + _progress_jumps(ctx)


# Progress measures that are labels, not quantities: their changes are no stage.
NOT_JUMP_MEASURES = ("top_frequency",)


def _progress_jumps(ctx: JobContext) -> list[Any]:
    """Jumps of the run's progress measures (``progress/<name>`` of the metrics results;
    per-head measures, with a further ``/``, are left to their summary)."""
    from phaseboard.analysis.phases import measure_jumps

    with ctx.db.session() as s:
        rows = s.execute(
            sa.select(Result.step, Result.values)
            .where(Result.run_id == ctx.run_id, Result.kind == "metrics")
            .order_by(Result.step, Result.id)
        ).all()
    series: dict[str, dict[int, float]] = {}
    for step, values in rows:
        for key, value in (values or {}).items():
            name = key.removeprefix("progress/")
            if (
                key.startswith("progress/")
                and "/" not in name
                and name not in NOT_JUMP_MEASURES
                and isinstance(value, int | float)
                and step is not None
                and step > 0
            ):
                series.setdefault(name, {})[int(step)] = float(value)
    out = []
    for name, points in sorted(series.items()):
        steps = sorted(points)
        out += measure_jumps(steps, [points[k] for k in steps], name=name)
    return out


LENSES = (
    Lens(
        name="phases",
        title="stage boundaries",
        scope="run",
        description="Stage boundaries from the LLC and loss curves and the other lenses' "
        "candidates.",
        handler=run_phases,
        lane="fast",
        min_checkpoints=0,
        rerun="results",
        view=LensView("_phases.html", "app.js", placement="page"),
    ),
)
