"""What each job kind computes: kind -> function from claimed job(s) to result rows.

A handler gets a ``JobContext`` per job (the job row's fields, the worker's device, the
blob store and a ``progress(done, total, message)`` callback) and returns, per job, a list
of ``{"restriction": str, "values": dict}``. ``llc`` and ``llc_restricted`` are batched:
several checkpoints of one run with one config go through ``estimate_llc_many`` /
``estimate_llc_restricted_many`` together.

Analysis code is imported inside the handlers, so the API process never imports torch
just to plan jobs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from phaseboard.server.db import Database
from phaseboard.server.jobs.token_data import attach_token_data
from phaseboard.server.models import (
    Checkpoint,
    Job,
    MetricPoint,
    PhaseBoundary,
    Result,
    Run,
    utcnow,
)
from phaseboard.server.series_store import series_names
from phaseboard.server.storage import BlobStore

Progress = Callable[[int, int, str], None]
ResultRows = list[dict[str, Any]]


class JobFailed(Exception):
    """A job that cannot succeed (bad checkpoint, unknown task): failed, not retried."""


class JobLost(Exception):
    """Raised by ``progress``: the job was cancelled/reassigned, or the worker is stopping."""


@dataclass
class JobContext:
    job_id: int
    run_id: int
    checkpoint_id: int | None
    kind: str
    config: dict[str, Any]
    device: str
    db: Database
    store: BlobStore
    progress: Progress
    # Memory budget of one vectorised LLC batch (None: the device's default).
    memory_mb: int | None = None
    # Filled lazily by the helpers below.
    _cache: dict[str, Any] = field(default_factory=dict)

    def run(self) -> Run:
        if "run" not in self._cache:
            with self.db.session() as s:
                run = s.get(Run, self.run_id)
                if run is None:
                    raise JobFailed(f"run {self.run_id} no longer exists")
                s.expunge(run)
            self._cache["run"] = run
        return self._cache["run"]

    def task(self) -> Any:
        if "task" not in self._cache:
            from phaseboard.analysis.tasks import get_task

            run = self.run()
            if not run.task:
                raise JobFailed(f"run {run.name!r} has no task")
            try:
                task = get_task(run.task, run.task_config or {})
                attach_token_data(task, self.db, self.store, self.run_id)  # generic tasks
                self._cache["task"] = task
            except (KeyError, ValueError, TypeError) as exc:
                raise JobFailed(f"task {run.task!r}: {exc}") from exc
        return self._cache["task"]

    def model(self) -> Any:
        """The task's model with this job's checkpoint loaded, on ``device``."""
        from phaseboard.analysis.tasks import CheckpointMismatch

        assert self.checkpoint_id is not None
        task = self.task()
        model = task.build_model()
        state = load_checkpoint(self.db, self.store, self.checkpoint_id, model.state_dict())
        try:
            task.load_state_dict(model, state)
        except CheckpointMismatch as exc:
            raise JobFailed(str(exc)) from exc
        return model.to(self.device)


def load_checkpoint(
    db: Database, store: BlobStore, checkpoint_id: int, expected: Any = None
) -> dict[str, Any]:
    """The checkpoint's weights under the model's names, through the key mapping recorded at
    upload; with ``expected`` (the model's names) a checkpoint uploaded before its run had a
    task gets its prefix worked out now."""
    from phaseboard.analysis.checkpoints import (
        CheckpointError,
        KeyMapping,
        apply_key_mapping,
        load_state_dict_file,
        resolve_prefix,
    )

    with db.session() as s:
        ckpt = s.get(Checkpoint, checkpoint_id)
        if ckpt is None:
            raise JobFailed(f"checkpoint {checkpoint_id} no longer exists")
        sha, mapping = ckpt.sha256, KeyMapping.from_dict(ckpt.key_mapping)
    try:
        raw = load_state_dict_file(store.open_path(sha))
        state = apply_key_mapping(raw, mapping)
    except CheckpointError as exc:
        raise JobFailed(f"checkpoint {checkpoint_id}: {exc}") from exc
    if expected is not None and set(state) != set(expected):
        prefix = resolve_prefix(raw, expected)
        state = {k[len(prefix) :]: v for k, v in raw.items()}
    return state


def _llc_config(ctx: JobContext) -> Any:
    from phaseboard.analysis.llc import LLCConfig

    cfg = {k: v for k, v in ctx.config.items() if k != "restrictions"}
    cfg["device"] = ctx.device
    if cfg.get("n_beta") is None and cfg.get("num_samples") is None:
        cfg["num_samples"] = ctx.task().num_train  # n_beta = n / log n of the training set
    try:
        return LLCConfig.from_dict(cfg)
    except (TypeError, ValueError) as exc:
        raise JobFailed(f"bad LLC config: {exc}") from exc


def _batches(ctx: JobContext, split: str, config: Any) -> Any:
    return ctx.task().batches(split, getattr(config, "batch_size", None), seed=config.seed)


def _llc_values(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


# --- handlers ------------------------------------------------------------------------


def _load_models(
    ctxs: list[JobContext],
) -> tuple[dict[int, ResultRows | Exception], list[Any], list[JobContext]]:
    """Each job's model; a checkpoint that fails to load fails only its own job."""
    out: dict[int, ResultRows | Exception] = {}
    models, ok = [], []
    for ctx in ctxs:
        try:
            models.append(ctx.model())
            ok.append(ctx)
        except Exception as exc:  # noqa: BLE001 - one bad checkpoint fails only its job
            out[ctx.job_id] = exc
    return out, models, ok


def run_llc(ctxs: list[JobContext]) -> dict[int, ResultRows | Exception]:
    """Full-model LLC; several jobs (same run and config) go through estimate_llc_many."""
    from phaseboard.analysis.llc import estimate_llc, estimate_llc_many

    out, models, ok = _load_models(ctxs)
    if not ok:
        return out
    lead = ok[0]
    config = _llc_config(lead)
    task = lead.task()
    batches = _batches(lead, "train", config)

    def progress(done: int, total: int, message: str) -> None:
        # A job cancelled mid-batch just drops out (its finish is refused); stop only when
        # none of the batch is still ours.
        lost = 0
        for ctx in ok:
            try:
                ctx.progress(done, total, message)
            except JobLost:
                lost += 1
        if lost == len(ok):
            raise JobLost("every job of this batch was cancelled or reassigned")

    chance = task.chance_loss()
    if len(ok) == 1:
        results = [
            estimate_llc(
                models[0], task.loss, batches, config, progress=progress, chance_loss=chance
            )
        ]
    else:
        results = estimate_llc_many(
            models,
            task.loss,
            batches,
            config,
            progress=progress,
            max_batch=_max_rows(lead, models[0], config),
            chance_loss=chance,
        )
    for ctx, res in zip(ok, results, strict=True):
        # "batch": how many checkpoints shared this vectorised run (1 = alone).
        values = {**_llc_values(res), "batch": len(ok), **_settings(ctx)}
        out[ctx.job_id] = [{"restriction": "", "values": values}]
    return out


def _settings(ctx: JobContext) -> dict[str, Any]:
    """Which LLC series a result belongs to (results of other settings are kept apart)."""
    from phaseboard.server.jobs.planning import llc_settings_hash

    return {"settings_hash": llc_settings_hash(ctx.config)}


def run_llc_restricted(ctx: JobContext) -> ResultRows:
    """Every weight group (vectorised) and every data subset: one result each."""
    return _single(run_llc_restricted_many, ctx)


def _max_rows(ctx: JobContext, model: Any, config: Any) -> int:
    """Rows per vmap call: from the memory budget in settings, else the device's default."""
    from phaseboard.analysis.llc import default_max_rows, rows_for_budget

    if ctx.memory_mb is not None:
        return rows_for_budget(model, config, ctx.memory_mb * 1024 * 1024)
    return default_max_rows(model, config)


def run_llc_restricted_many(ctxs: list[JobContext]) -> dict[int, ResultRows | Exception]:
    """Restricted LLCs of several checkpoints (same run and config) in one vectorised run.

    Weight groups: rows = checkpoint x group x chain in one vmap step, chunked to the memory
    budget (``estimate_llc_restricted_many``); data subsets: checkpoint x subset x chain,
    each subset's rows on its own data (``estimate_llc_data_restricted_many``). Each
    checkpoint's results equal those of its own job alone.
    """
    from phaseboard.analysis.restrict import (
        estimate_llc_data_restricted_many,
        estimate_llc_restricted_many,
    )

    out, models, ok = _load_models(ctxs)
    if not ok:
        return out
    lead = ok[0]
    task = lead.task()
    config = _llc_config(lead)
    wanted = lead.config.get("restrictions")
    masks = {f"weights:{k}": v for k, v in task.weight_groups(models[0]).items()}
    subsets = [f"data:{k}" for k in task.data_subsets()]
    if wanted is not None:
        known = set(masks) | set(subsets)
        unknown = sorted(set(wanted) - known)
        if unknown:
            err = JobFailed(f"unknown restriction(s) {unknown}; task has {sorted(known)}")
            return {**out, **{ctx.job_id: err for ctx in ok}}
        masks = {k: v for k, v in masks.items() if k in wanted}
        subsets = [k for k in subsets if k in wanted]
    max_rows = _max_rows(lead, models[0], config)
    parts = (1 if masks else 0) + (1 if subsets else 0)
    stage = {"i": 0, "label": ""}

    def progress(done: int, total: int, message: str) -> None:
        lost = 0
        overall = stage["i"] * total + done
        text = f"{stage['label']}: {message}" if stage["label"] else message
        for ctx in ok:
            try:
                ctx.progress(overall, max(parts, 1) * total, text)
            except JobLost:
                lost += 1
        if lost == len(ok):
            raise JobLost("every job of this batch was cancelled or reassigned")

    rows: dict[int, ResultRows] = {ctx.job_id: [] for ctx in ok}
    if masks:
        stage["label"] = f"{len(masks)} weight groups x {len(ok)} checkpoints"
        per_ckpt = estimate_llc_restricted_many(
            models,
            task.loss,
            _batches(lead, "train", config),
            config,
            masks,
            max_rows=max_rows,
            progress=progress,
            chance_loss=task.chance_loss(),
        )
        for ctx, res in zip(ok, per_ckpt, strict=True):
            rows[ctx.job_id] += [
                {"restriction": k, "values": {**_llc_values(v), "batch": len(ok), **_settings(ctx)}}
                for k, v in res.items()
            ]
        stage["i"] += 1
    if subsets:
        stage["label"] = f"{len(subsets)} data subsets x {len(ok)} checkpoints"
        per_ckpt = estimate_llc_data_restricted_many(
            models,
            task.loss,
            {k: _batches(lead, k.removeprefix("data:"), config) for k in subsets},
            config,
            max_rows=max_rows,
            progress=progress,
            chance_loss=task.chance_loss(),
        )
        for ctx, res in zip(ok, per_ckpt, strict=True):
            rows[ctx.job_id] += [
                {"restriction": k, "values": {**_llc_values(v), "batch": len(ok), **_settings(ctx)}}
                for k, v in res.items()
            ]
    out.update(rows)
    return out


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
        ctx.task(), model, reference_state=reference, device=ctx.device, **kwargs
    )
    return [{"restriction": "", "values": {k: _finite(v) for k, v in values.items()}}]


def _finite(x: Any) -> float | None:
    """JSON (and PostgreSQL) has no NaN/inf: store None."""
    x = float(x)
    return x if math.isfinite(x) else None


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


def run_calibrate(ctx: JobContext) -> ResultRows:
    """The LLC settings grid on a few checkpoints in one vectorised batch; recommends one."""
    from phaseboard.analysis.llc import calibrate
    from phaseboard.analysis.tasks import CheckpointMismatch
    from phaseboard.server.jobs.planning import llc_settings_hash

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
    sub = JobContext(
        ctx.job_id, ctx.run_id, None, "llc", dict(ctx.config.get("llc") or {}), ctx.device,
        ctx.db, ctx.store, ctx.progress, ctx._cache,
    )  # fmt: skip
    config = _llc_config(sub)
    model = task.build_model()
    states = []
    for cid in ids:
        state = load_checkpoint(ctx.db, ctx.store, cid)
        try:
            task.load_state_dict(model, state)
        except CheckpointMismatch as exc:
            raise JobFailed(f"checkpoint {cid}: {exc}") from exc
        states.append({k: v.detach().clone().to(ctx.device) for k, v in model.state_dict().items()})
    report = calibrate(
        model.to(ctx.device),
        task.loss,
        _batches(ctx, "train", config),
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
    values["settings_hash"] = llc_settings_hash(sub.config)
    values["base"] = sub.config
    return [{"restriction": "", "values": values}]


def _run_checkpoints(ctx: JobContext) -> list[tuple[int, int]]:
    """(id, step) of the run's usable checkpoints (flagged ones left out), by step."""
    with ctx.db.session() as s:
        rows = s.execute(
            sa.select(Checkpoint.id, Checkpoint.step)
            .where(Checkpoint.run_id == ctx.run_id, Checkpoint.status == "ok")
            .order_by(Checkpoint.step)
        ).all()
    return [(int(i), int(st)) for i, st in rows]


def _loaded_model(ctx: JobContext, model: Any, checkpoint_id: int) -> Any:
    from phaseboard.analysis.tasks import CheckpointMismatch

    try:
        ctx.task().load_state_dict(model, load_checkpoint(ctx.db, ctx.store, checkpoint_id))
    except CheckpointMismatch as exc:
        raise JobFailed(f"checkpoint {checkpoint_id}: {exc}") from exc
    return model


# Largest outputs matrix (checkpoints x output values) kept as a blob for the cross-run
# views: 2^25 float16 values = 64 MiB. Beyond it the result says why there is no blob.
MAX_OUTPUT_BLOB_VALUES = 2**25


def _npy_blob(ctx: JobContext, array: Any) -> str:
    """A float16 .npy of ``array`` in the blob store; its sha256."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array).astype(np.float16), allow_pickle=False)
    return ctx.store.put_bytes(buf.getvalue())


def _at_each_checkpoint(
    ctx: JobContext,
    ckpts: list[tuple[int, int]],
    measure: Callable[[Any], Any],
    what: str,
    lens: str,
) -> list[Any]:
    """``measure(model)`` at each of the run's checkpoints, in step order, on one model
    reloaded in place; at least two checkpoints (a lens over training needs a path)."""
    if len(ckpts) < 2:
        raise JobFailed(f"{lens} needs at least two checkpoints")
    model = ctx.task().build_model().to(ctx.device)
    out = []
    for k, (ckpt_id, _) in enumerate(ckpts):
        ctx.progress(k, len(ckpts), f"{what} at checkpoint {k + 1}/{len(ckpts)}")
        out.append(measure(_loaded_model(ctx, model, ckpt_id)))
    return out


def run_essential_dynamics(ctx: JobContext) -> ResultRows:
    """Outputs on the probe set at every checkpoint, PCA over checkpoints, turning points.

    The outputs matrix itself is kept too (``outputs_blob``, float16 .npy) with the probe's
    identity, so the compare page can put several runs in one PC space and measure the
    function-space distance between them (``analysis.run_group``) without a forward pass.
    """
    import numpy as np

    from phaseboard.analysis.essential_dynamics import (
        essential_dynamics,
        lens_probe,
        probe_hash,
        probe_outputs,
    )
    from phaseboard.server.jobs.planning import config_hash

    task = ctx.task()
    ckpts = _run_checkpoints(ctx)
    n_probe = int(ctx.config.get("probe_examples", 128))
    probe, split = lens_probe(task, max_examples=n_probe)
    run = ctx.run()
    probe_id = {
        "task": run.task,
        "task_config_hash": config_hash(run.task_config or {})[:16],
        "split": split,
        "probe_examples": n_probe,
        "probe_hash": probe_hash(probe),
    }
    outputs = _at_each_checkpoint(
        ctx, ckpts, lambda model: probe_outputs(task, model, probe, device=ctx.device),
        "outputs", "essential dynamics",
    )  # fmt: skip
    matrix = np.stack(outputs)  # (checkpoints, output values), rows by step
    ed = essential_dynamics([st for _, st in ckpts], matrix)
    values = {**ed.to_dict(), "probe_examples": n_probe, "output_dim": int(outputs[0].size)}
    values["probe"] = probe_id
    if matrix.size <= MAX_OUTPUT_BLOB_VALUES:
        values["outputs_blob"] = _npy_blob(ctx, matrix)  # float16 .npy, checkpoints x D
    else:
        values["outputs_blob"] = None
        values["outputs_skipped"] = (
            f"outputs matrix of {matrix.size} values is over {MAX_OUTPUT_BLOB_VALUES}: not kept"
        )
    return [{"restriction": "", "values": values}]


def run_learning_order(ctx: JobContext) -> ResultRows:
    """Per-example loss on the probe set at every checkpoint (one float16 blob per run)
    and each example's learned-at step (``analysis.learning_order``)."""
    import numpy as np

    from phaseboard.analysis.essential_dynamics import probe_batch
    from phaseboard.analysis.learning_order import (
        learned_at,
        order_by_learned_at,
        per_example_losses,
    )

    task = ctx.task()
    ckpts = _run_checkpoints(ctx)
    n_probe = int(ctx.config.get("probe_examples", 1024))
    split = str(ctx.config.get("split", "train"))
    probe = probe_batch(task, max_examples=n_probe, split=split)
    rows = _at_each_checkpoint(
        ctx, ckpts, lambda model: per_example_losses(task, model, probe, device=ctx.device),
        "per-example loss", "learning order",
    )  # fmt: skip
    losses = np.stack(rows)  # (checkpoints, examples)
    steps = [st for _, st in ckpts]
    learned, threshold = learned_at(
        steps,
        losses,
        threshold=ctx.config.get("threshold"),
        relative_threshold=float(ctx.config.get("relative_threshold", 0.1)),
    )
    blob = _npy_blob(ctx, losses)
    values = {
        "steps": steps,
        "split": split,
        "n_examples": int(losses.shape[1]),
        "threshold": threshold,
        "learned_at": [None if not np.isfinite(v) else float(v) for v in learned],
        "order": [int(i) for i in order_by_learned_at(learned)],
        "n_learned": int(np.isfinite(learned).sum()),
        "losses_blob": blob,  # float16 .npy, checkpoints x examples
    }
    return [{"restriction": "", "values": values}]


def _lens_boundaries(ctx: JobContext) -> list[Any]:
    """Boundary candidates other lenses left in their newest run-level results."""
    from phaseboard.analysis.phases import Boundary

    with ctx.db.session() as s:
        values = s.scalar(
            sa.select(Result.values)
            .where(Result.run_id == ctx.run_id, Result.kind == "essential_dynamics")
            .order_by(Result.id.desc())
            .limit(1)
        )
    out = []
    for b in (values or {}).get("turning_points", []):
        out.append(Boundary(float(b["step"]), b["source"], b["kind"], float(b["score"]), ""))
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


def run_noop(ctx: JobContext) -> ResultRows:
    return [{"restriction": "", "values": {}}]


def run_sleep(ctx: JobContext) -> ResultRows:
    """Sleeps ``seconds`` in small steps, reporting progress (tests: cancel, crash)."""
    total = float(ctx.config.get("seconds", 1.0))
    n = max(1, int(total / 0.05))
    for i in range(n):
        time.sleep(total / n)
        ctx.progress(i + 1, n, f"slept {i + 1}/{n}")
    return [{"restriction": "", "values": {"seconds": total}}]


# kind -> handler of one job; batched kinds are in BATCHED.
HANDLERS: dict[str, Callable[[JobContext], ResultRows]] = {
    "llc": lambda ctx: _single(run_llc, ctx),
    "llc_restricted": run_llc_restricted,
    "metrics": run_metrics,
    "phases": run_phases,
    "calibrate": run_calibrate,
    "essential_dynamics": run_essential_dynamics,
    "learning_order": run_learning_order,
    "noop": run_noop,
    "sleep": run_sleep,
}
BATCHED: dict[str, Callable[[list[JobContext]], dict[int, ResultRows | Exception]]] = {
    "llc": run_llc,
    "llc_restricted": run_llc_restricted_many,
}
# Kinds whose new results change a run's phase boundaries.
TRIGGERS_PHASES = ("llc", "metrics", "essential_dynamics")


def _single(batched: Callable[[list[JobContext]], dict[int, Any]], ctx: JobContext) -> ResultRows:
    out = batched([ctx])[ctx.job_id]
    if isinstance(out, Exception):
        raise out
    return out
