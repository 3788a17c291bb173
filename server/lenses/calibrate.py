"""The ``calibrate`` lens: per run, on request, the (lr x localization [x n_beta]) grid of
LLC settings on a few checkpoints in one vectorised batch (``analysis.llc.calibrate``); one
result with every setting's estimate, verdict and mean trace, and the recommended setting.

Its config carries the checkpoint ids (default: the first settled, the middle and the last
checkpoint, ``planning.calibration_checkpoints``) and the grid (default
``planning.DEFAULT_CALIBRATION``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from phaseboard.server.errors import BadInput
from phaseboard.server.jobs.handlers import JobContext, JobFailed, ResultRows, load_checkpoint
from phaseboard.server.jobs.planning import (
    DEFAULT_CALIBRATION,
    PlanContext,
    calibration_checkpoints,
    llc_settings_hash,
)
from phaseboard.server.lenses._registry import Lens, LensView
from phaseboard.server.lenses.llc import llc_config, sampler_config, train_batches
from phaseboard.server.models import Checkpoint


def calibrate_config(plan: PlanContext) -> dict[str, Any]:
    """The base LLC settings, the grid and the checkpoints to calibrate on."""
    grid = {**DEFAULT_CALIBRATION, **(plan.override.get("calibrate") or {})}
    unknown = sorted(set(grid) - set(DEFAULT_CALIBRATION))
    if unknown:
        raise BadInput(f"calibrate: unknown key(s) {unknown}; known: lrs, localizations, n_betas")
    cfg: dict[str, Any] = {
        "llc": llc_config(plan),
        "lrs": [float(x) for x in grid["lrs"]],
        "localizations": [float(x) for x in grid["localizations"]],
        "n_betas": None if grid["n_betas"] is None else [float(x) for x in grid["n_betas"]],
    }
    if not cfg["lrs"] or not cfg["localizations"] or cfg["n_betas"] == []:
        raise BadInput("calibrate: lrs, localizations (and n_betas if given) may not be empty")
    cfg["checkpoint_ids"] = (
        list(plan.checkpoint_ids)
        if plan.requested_checkpoints
        else calibration_checkpoints(plan.session, plan.run.id)
    )
    return cfg


def run_calibrate(ctx: JobContext) -> ResultRows:
    """The LLC settings grid on a few checkpoints in one vectorised batch; recommends one."""
    from phaseboard.analysis.llc import calibrate
    from phaseboard.analysis.tasks import CheckpointMismatch

    task = ctx.task()
    ids = list(ctx.config.get("checkpoint_ids") or [])
    if not ids:
        raise JobFailed("calibrate: no checkpoints given")
    with ctx.db.session() as s:
        query = sa.select(Checkpoint.id, Checkpoint.step).where(Checkpoint.id.in_(ids))
        steps = {int(i): int(step) for i, step in s.execute(query)}
    ids = sorted((i for i in ids if i in steps), key=lambda i: steps[i])
    if not ids:
        raise JobFailed("calibrate: its checkpoints no longer exist")
    base = dict(ctx.config.get("llc") or {})
    config = sampler_config(ctx, base)
    model = task.build_model()
    states = []
    for cid in ids:
        state = load_checkpoint(ctx.db, ctx.store, cid, model.state_dict())
        try:
            task.load_state_dict(model, state)
        except CheckpointMismatch as exc:
            raise JobFailed(f"checkpoint {cid}: {exc}") from exc
        # What the sampler reads: parameters (tied ones once) and every buffer, including
        # the non-persistent ones no state_dict holds (rotary tables, causal masks).
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        states.append({k: v.detach().clone().to(ctx.device) for k, v in tensors.items()})
    report = calibrate(
        model.to(ctx.device),
        task.loss,
        train_batches(ctx, "train", config),
        config,
        lrs=ctx.config["lrs"],
        localizations=ctx.config["localizations"],
        n_betas=ctx.config.get("n_betas"),
        checkpoints=states,
        chance_loss=task.chance_loss(),
        progress=ctx.progress,
    )
    values = report.to_dict()
    values["checkpoints"] = [{"id": i, "step": int(steps[i])} for i in ids]
    values["settings_hash"] = llc_settings_hash(base)
    values["base"] = base
    return [{"restriction": "", "values": values}]


LENSES = (
    Lens(
        name="calibrate",
        title="LLC calibration",
        scope="run",
        description="A grid of SGLD settings on a few checkpoints, with a recommended one.",
        handler=run_calibrate,
        config=calibrate_config,
        lane="heavy",
        rerun="never",
        view=LensView("_calibration.html", "diagnostics.js", placement="page"),
    ),
)
