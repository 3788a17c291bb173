"""The ``metrics`` lens: per checkpoint, train/test loss and accuracy, weight norm, distance
from init, gradient norm, Hessian trace and the task's progress measures
(``analysis.metrics.checkpoint_metrics``); one result each."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from phaseboard.server.jobs.handlers import JobContext, ResultRows, finite, load_checkpoint
from phaseboard.server.jobs.planning import PlanContext
from phaseboard.server.lenses._registry import Lens, LensView
from phaseboard.server.models import Checkpoint


def metrics_config(plan: PlanContext) -> dict[str, Any]:
    """The run's ``analysis_config.metrics`` under the request's ``metrics``."""
    return plan.run_config("metrics") | dict(plan.override.get("metrics") or {})


def run_metrics(ctx: JobContext) -> ResultRows:
    from phaseboard.analysis.metrics import checkpoint_metrics

    model = ctx.model()
    reference = None
    with ctx.db.session() as s:
        first = s.execute(
            sa.select(Checkpoint.id, Checkpoint.step)
            .where(Checkpoint.run_id == ctx.run_id)
            .order_by(Checkpoint.step)
            .limit(1)
        ).first()
    if first is not None and first[1] == 0:
        # Through the task's loader: the model's own names (tied, renamed keys resolved).
        task = ctx.task()
        raw = load_checkpoint(ctx.db, ctx.store, first[0], model.state_dict())
        reference = task.load_state_dict(task.build_model(), raw).state_dict()
    ctx.progress(0, 1, "metrics")
    kwargs = {k: v for k, v in ctx.config.items() if k != "device"}
    values = checkpoint_metrics(
        ctx.task(), model, reference_state=reference, device=ctx.device, progress=ctx.progress,
        **kwargs,
    )  # fmt: skip
    return [{"restriction": "", "values": {k: finite(v) for k, v in values.items()}}]


LENSES = (
    Lens(
        name="metrics",
        title="metrics",
        scope="checkpoint",
        description="Loss, accuracy, weight norm, distance from init, gradient norm, Hessian "
        "trace and the task's progress measures at each checkpoint.",
        handler=run_metrics,
        config=metrics_config,
        lane="fast",
        auto=True,
        feeds_phases=True,
        # The progress measures have their own panel in the lens section; the rest of the
        # metrics are drawn by the page's plots.
        view=LensView("_lens_progress.html", "lens_progress.js", order=20),
    ),
)
