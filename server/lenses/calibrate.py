"""The ``calibrate`` lens: per run, on request, the (lr x localization [x n_beta]) grid of
LLC settings on a few checkpoints, vectorised (``analysis.llc.calibrate``): as few sampler
calls as the memory budget allows (``grid_chunks``, rows per call as the LLC lenses count
them: ``llc.max_rows``); one result with every setting's estimate, verdict and mean trace,
and the recommended setting (``analysis.llc.recommend`` over the whole grid).

Its config carries the checkpoint ids a request named, or none: then the job picks three
when it runs, spread over the whole trajectory and including its sharpest part (where the
training loss moves fastest per log-step; ``analysis.llc.calibration_points`` on the
run's usable checkpoints and their training losses), and the grid (default
``planning.DEFAULT_CALIBRATION``; ``planning.AUTO_CALIBRATION`` for the automatic
calibration of a run without LLC settings, whose ``on_done`` makes the recommendation the
run's settings: ``server.jobs.auto_calibration``).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from phaseboard.server.errors import BadInput
from phaseboard.server.jobs.auto_calibration import apply_calibration
from phaseboard.server.jobs.handlers import (
    JobContext,
    JobFailed,
    ResultRows,
    load_checkpoint,
    usable_checkpoints,
)
from phaseboard.server.jobs.planning import (
    AUTO_CALIBRATION,
    DEFAULT_CALIBRATION,
    PlanContext,
    checkpoints_fingerprint,
    llc_settings_hash,
)
from phaseboard.server.lenses._registry import Lens, LensView
from phaseboard.server.lenses.llc import llc_config, max_rows, sampler_config, train_batches
from phaseboard.server.models import Checkpoint, Result
from phaseboard.server.series_store import read_series, series_names

CALIBRATION_POINTS = 3  # checkpoints a calibration picks when none are named
# Logged series that hold the training loss, in the order they are trusted.
TRAIN_LOSS_SERIES = ("train_loss", "loss", "train/loss")


def calibrate_config(plan: PlanContext) -> dict[str, Any]:
    """The base LLC settings, the grid and the checkpoints to calibrate on (None: picked
    when the job runs, over the run's checkpoints at planning time: their fingerprint)."""
    base_grid = AUTO_CALIBRATION if plan.auto_calibrate else DEFAULT_CALIBRATION
    grid = {**base_grid, **(plan.override.get("calibrate") or {})}
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
    if plan.requested_checkpoints:
        cfg["checkpoint_ids"] = list(plan.checkpoint_ids)
    else:
        cfg["checkpoint_ids"] = None
        cfg["trajectory"] = checkpoints_fingerprint(plan.session, plan.run.id)
    return cfg


def training_losses(ctx: JobContext, ckpts: list[tuple[int, int]]) -> list[float | None]:
    """The training loss at each checkpoint (``(id, step)``): its metrics result where one
    exists, else the logged training-loss series at the nearest step at or before it."""
    import numpy as np

    ids = [c for c, _ in ckpts]
    with ctx.db.session() as s:
        rows = s.execute(
            sa.select(Result.checkpoint_id, Result.values["train_loss"].as_float()).where(
                Result.run_id == ctx.run_id,
                Result.kind == "metrics",
                Result.restriction == "",
                Result.checkpoint_id.in_(ids),
            )
        ).all()
        measured = {int(c): v for c, v in rows if v is not None}
        logged: tuple[Any, Any] | None = None
        names = set(series_names(s, ctx.run_id))
        for name in TRAIN_LOSS_SERIES:
            if name in names:
                steps, values, _ = read_series(s, ctx.run_id, name, max_points=100_000)
                logged = (steps, values)
                break
    out: list[float | None] = []
    for cid, step in ckpts:
        if cid in measured:
            out.append(float(measured[cid]))
        elif logged is not None and len(logged[0]) and logged[0][0] <= step:
            i = int(np.searchsorted(logged[0], step, side="right")) - 1
            out.append(float(logged[1][i]))
        else:
            out.append(None)
    return out


def pick_checkpoints(ctx: JobContext) -> list[int]:
    """Checkpoint ids to calibrate on: ``CALIBRATION_POINTS`` of the run's usable ones,
    spread over the trajectory including its sharpest part (``calibration_points``)."""
    from phaseboard.analysis.llc import calibration_points

    ckpts = usable_checkpoints(ctx.db, ctx.run_id)
    if not ckpts:
        raise JobFailed("calibrate: the run has no checkpoints to calibrate on")
    losses = training_losses(ctx, ckpts)
    picked = calibration_points([step for _, step in ckpts], losses, CALIBRATION_POINTS)
    return [ckpts[i][0] for i in picked]


def grid_chunks(
    lrs: list[float], gammas: list[float], per_call: int
) -> list[tuple[list[float], list[float]]]:
    """The (lrs x localizations) grid as sub-grids of at most ``per_call`` settings each
    (several lrs with every localization, or one lr with some): one sampler call each, so
    a call's rows stay within the memory budget."""
    if per_call >= len(gammas):
        step = per_call // len(gammas)
        return [(lrs[i : i + step], list(gammas)) for i in range(0, len(lrs), step)]
    return [([lr], gammas[j : j + per_call]) for lr in lrs for j in range(0, len(gammas), per_call)]


def join_checkpoints(per_checkpoint: list[list[Any]]) -> list[Any]:
    """Calibration entries of one checkpoint each (``per_checkpoint[k]``: every setting at
    checkpoint ``k``, in grid order) joined into entries over all of them, as one call on
    every checkpoint would report them: the summary at the last, each checkpoint's numbers,
    the first verdict that is not ok, and the largest lr / 2 shift."""
    import dataclasses

    from phaseboard.analysis.llc.calibration import lr_shift

    joined = []
    for same in zip(*per_checkpoint, strict=True):
        rows = [{**c, "index": k} for k, e in enumerate(same) for c in e.per_checkpoint]
        bad = [c["verdict"] for c in rows if c["verdict"] != "ok"]
        entry = dataclasses.replace(
            same[-1], per_checkpoint=rows, verdict=bad[0] if bad else "ok", ok=not bad
        )
        entry.lr_shift = lr_shift(entry)
        joined.append(entry)
    return joined


class _PartsProgress:
    """Progress of calls that may run at once, reported as their sum over the whole
    calibration (each call reports its own ``done`` of ``total`` sampler steps)."""

    def __init__(self, progress: Any, parts: int) -> None:
        self.progress, self.parts = progress, parts
        self.done = [0] * parts
        self.lock = threading.Lock()

    def part(self, i: int) -> Any:
        def report(done: int, total: int, message: str) -> None:
            with self.lock:
                self.done[i] = done
                finished = sum(d >= total for d in self.done)
                suffix = f" ({finished}/{self.parts} parts done)" if self.parts > 1 else ""
                self.progress(sum(self.done), self.parts * total, f"{message}{suffix}")

        return report


def run_calibrate(ctx: JobContext) -> ResultRows:
    """The LLC settings grid on a few checkpoints, in as few vectorised calls as the memory
    budget allows; recommends one."""
    from phaseboard.analysis.llc import CalibrationReport, calibrate, recommend
    from phaseboard.analysis.llc.calibration import judge_without_descent
    from phaseboard.analysis.tasks import CheckpointMismatch

    task = ctx.task()
    named = ctx.config.get("checkpoint_ids")
    ids = pick_checkpoints(ctx) if named is None else list(named)
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
    model = model.to(ctx.device)
    lrs, gammas = list(ctx.config["lrs"]), list(ctx.config["localizations"])
    n_betas = ctx.config.get("n_betas")
    # Rows of one setting at one checkpoint: its chains, and its lr/2 and localization/2
    # checks. All checkpoints in each call when a setting's rows fit the budget; else one
    # checkpoint a call, the settings' verdicts joined over the calls (``join_checkpoints``).
    budget = max_rows(ctx, model, config)
    per_setting = 3 * config.num_chains * len(n_betas or [None])
    together = per_setting * len(states) <= budget
    groups = [states] if together else [[state] for state in states]
    per_call = max(1, budget // (per_setting * len(groups[0])))
    calls = [(g, chunk) for g in groups for chunk in grid_chunks(lrs, gammas, per_call)]
    tracker = _PartsProgress(ctx.progress, len(calls))

    def run_call(i: int) -> list[Any]:
        group, (chunk_lrs, chunk_gammas) = calls[i]
        return calibrate(
            model,
            task.loss,
            train_batches(ctx, "train", config),  # every call draws the same minibatches
            config,
            lrs=chunk_lrs,
            localizations=chunk_gammas,
            n_betas=n_betas,
            checkpoints=group,
            chance_loss=task.chance_loss(),
            progress=tracker.part(i),
        ).entries

    # The calls are independent: on a CPU pool they run side by side, one per core (the
    # run's LLC jobs wait for this one, so the pool's other workers would idle).
    workers = max(1, min(ctx.parallel_calls, len(calls)))
    with ThreadPoolExecutor(workers, thread_name_prefix="pb-calibrate") as pool:
        parts = list(pool.map(run_call, range(len(calls))))
    found: list[list[Any]] = [[] for _ in groups]
    for (group, _), entries_of_call in zip(calls, parts, strict=True):
        found[next(k for k, g in enumerate(groups) if g is group)] += entries_of_call
    entries = found[0] if together else join_checkpoints(found)
    skip = judge_without_descent(entries)
    best, reason = recommend(entries)
    report = CalibrationReport(entries, best, reason, config.to_dict(), skip)
    values = report.to_dict()
    values["calls"] = len(calls)
    values["parallel_calls"] = workers
    values["checkpoints"] = [
        {"id": i, "step": int(steps[i]), "left_out": k in skip} for k, i in enumerate(ids)
    ]
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
        on_done=apply_calibration,
    ),
)
