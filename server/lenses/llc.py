"""The LLC lenses: ``llc`` (the whole model) and ``llc_restricted`` (weight groups and data
subsets), one job per checkpoint, several checkpoints of one run and config per vectorised
sampler run (``analysis.llc.estimate_llc_many``, ``analysis.restrict``).

``llc_restricted`` is **one job for all restrictions** the task declares: every weight group
goes through ``estimate_llc_restricted_many`` together, every data subset through
``estimate_llc_data_restricted_many``; one result per restriction, named
``weights:<group>`` / ``data:<subset>``. ``config["restrictions"]`` may narrow the list.
"""

from __future__ import annotations

from typing import Any

from phaseboard.server.jobs.handlers import (
    JobContext,
    JobFailed,
    ResultRows,
    load_models,
    shared_progress,
    single,
)
from phaseboard.server.jobs.planning import (
    PlanContext,
    check_llc_keys,
    default_llc,
    llc_settings_hash,
)
from phaseboard.server.lenses._registry import Lens, LensView

# --- config -------------------------------------------------------------------------


def llc_config(plan: PlanContext) -> dict[str, Any]:
    """The job's SGLD settings: defaults (for the run's task) < the run's
    ``analysis_config.llc`` < the request's."""
    cfg = {
        **default_llc(plan.run.task),
        **plan.run_config("llc"),
        **(plan.override.get("llc") or {}),
    }
    cfg.pop("device", None)  # where a job runs, not what it computes: never in the hash
    check_llc_keys(cfg)
    return cfg


def llc_restricted_config(plan: PlanContext) -> dict[str, Any]:
    """``llc_config`` plus the restrictions asked for (default: all the task declares)."""
    cfg = llc_config(plan)
    wanted = plan.override.get("restrictions", plan.run_config_value("restrictions"))
    if wanted is not None:
        cfg["restrictions"] = sorted(str(r) for r in wanted)
    return cfg


# --- handlers -----------------------------------------------------------------------


def sampler_config(ctx: JobContext, config: dict[str, Any] | None = None) -> Any:
    """The ``LLCConfig`` of a job's settings on the worker's device (n_beta from the task's
    training-set size unless given)."""
    from phaseboard.analysis.llc import LLCConfig

    raw = ctx.config if config is None else config
    cfg = {k: v for k, v in raw.items() if k != "restrictions"}
    cfg["device"] = ctx.device
    if cfg.get("n_beta") is None and cfg.get("num_samples") is None:
        cfg["num_samples"] = ctx.task().num_train  # n_beta = n / log n of the training set
    try:
        return LLCConfig.from_dict(cfg)
    except (TypeError, ValueError) as exc:
        raise JobFailed(f"bad LLC config: {exc}") from exc


def train_batches(ctx: JobContext, split: str, config: Any) -> Any:
    return ctx.task().batches(split, getattr(config, "batch_size", None), seed=config.seed)


def _values(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def _series(ctx: JobContext) -> dict[str, Any]:
    """Which LLC series a result belongs to (results of other settings are kept apart)."""
    return {"settings_hash": llc_settings_hash(ctx.config)}


CPU_BUDGET_MB = 512  # one vectorised call's memory on a CPU when settings name none


# Memory of a row's step under vmap and autograd over the tensors one plain forward saves
# for its backward: a 12-row call of a 2-layer GPT-2 (120k parameters, 16 sequences of 64
# tokens a minibatch) grew the process by 700 MB where the saved tensors were 20 MB a row.
ACTIVATION_FACTOR = 3


def row_bytes(ctx: JobContext, model: Any, config: Any) -> int:
    """Memory of one SGLD row: about 12 parameter-sized tensors (weights, gradient, noise,
    update, temporaries) plus ``ACTIVATION_FACTOR`` times the activations one minibatch
    keeps for the backward, measured on a training minibatch
    (``analysis.llc.budgets.activation_bytes``): on a language model these dominate."""
    from phaseboard.analysis.llc.budgets import activation_bytes, first_batch

    task = ctx.task()
    n = sum(p.numel() for p in model.parameters())
    size = 8 if str(getattr(config, "dtype", "float32")) == "float64" else 4
    batch, _ = first_batch(train_batches(ctx, "train", config))
    saved = activation_bytes(model, task.loss, batch, config)
    return 12 * n * size + ACTIVATION_FACTOR * saved


def max_rows(ctx: JobContext, model: Any, config: Any) -> int:
    """Rows per vmap call: the memory budget (``settings.llc_memory_mb``, on a CPU else
    ``CPU_BUDGET_MB``) over ``row_bytes``; on a GPU without a budget, the device's default."""
    from phaseboard.analysis.llc import default_max_rows

    if ctx.memory_mb is None and str(ctx.device).startswith("cuda"):
        return default_max_rows(model, config)
    budget = (ctx.memory_mb or CPU_BUDGET_MB) * 1024 * 1024
    return max(1, int(budget // max(row_bytes(ctx, model, config), 1)))


def run_llc_many(ctxs: list[JobContext]) -> dict[int, ResultRows | Exception]:
    """Full-model LLC; several jobs (same run and config) go through estimate_llc_many."""
    from phaseboard.analysis.llc import estimate_llc, estimate_llc_many

    out, models, ok = load_models(ctxs)
    if not ok:
        return out
    lead = ok[0]
    config = sampler_config(lead)
    task = lead.task()
    batches = train_batches(lead, "train", config)
    progress = shared_progress(ok)
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
            max_batch=max_rows(lead, models[0], config),
            chance_loss=chance,
        )
    for ctx, res in zip(ok, results, strict=True):
        # "batch": how many checkpoints shared this vectorised run (1 = alone).
        values = {**_values(res), "batch": len(ok), **_series(ctx)}
        out[ctx.job_id] = [{"restriction": "", "values": values}]
    return out


def run_llc(ctx: JobContext) -> ResultRows:
    return single(run_llc_many, ctx)


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

    out, models, ok = load_models(ctxs)
    if not ok:
        return out
    lead = ok[0]
    task = lead.task()
    config = sampler_config(lead)
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
    rows_per_call = max_rows(lead, models[0], config)
    parts = (1 if masks else 0) + (1 if subsets else 0)
    stage = {"i": 0, "label": ""}
    report = shared_progress(ok)

    def progress(done: int, total: int, message: str) -> None:
        overall = stage["i"] * total + done
        text = f"{stage['label']}: {message}" if stage["label"] else message
        report(overall, max(parts, 1) * total, text)

    rows: dict[int, ResultRows] = {ctx.job_id: [] for ctx in ok}

    def collect(per_ckpt: list[dict[str, Any]]) -> None:
        for ctx, res in zip(ok, per_ckpt, strict=True):
            rows[ctx.job_id] += [
                {"restriction": k, "values": {**_values(v), "batch": len(ok), **_series(ctx)}}
                for k, v in res.items()
            ]

    if masks:
        stage["label"] = f"{len(masks)} weight groups x {len(ok)} checkpoints"
        collect(
            estimate_llc_restricted_many(
                models,
                task.loss,
                train_batches(lead, "train", config),
                config,
                masks,
                max_rows=rows_per_call,
                progress=progress,
                chance_loss=task.chance_loss(),
            )
        )
        stage["i"] += 1
    if subsets:
        stage["label"] = f"{len(subsets)} data subsets x {len(ok)} checkpoints"
        collect(
            estimate_llc_data_restricted_many(
                models,
                task.loss,
                {k: train_batches(lead, k.removeprefix("data:"), config) for k in subsets},
                config,
                max_rows=rows_per_call,
                progress=progress,
                chance_loss=task.chance_loss(),
            )
        )
    out.update(rows)
    return out


def run_llc_restricted(ctx: JobContext) -> ResultRows:
    """Every weight group (vectorised) and every data subset: one result each."""
    return single(run_llc_restricted_many, ctx)


LENSES = (
    Lens(
        name="llc",
        title="LLC",
        scope="checkpoint",
        description="The local learning coefficient of the whole model at each checkpoint.",
        handler=run_llc,
        batch_handler=run_llc_many,
        config=llc_config,
        lane="heavy",
        auto=True,
        feeds_phases=True,
        uses_llc_settings=True,
        view=LensView("_plots.html", "app.js", placement="page"),
    ),
    Lens(
        name="llc_restricted",
        title="restricted LLC",
        scope="checkpoint",
        description="The LLC restricted to each weight group (layer, attention head) and "
        "each data subset the task declares.",
        handler=run_llc_restricted,
        batch_handler=run_llc_restricted_many,
        config=llc_restricted_config,
        lane="heavy",
        auto=True,
        uses_llc_settings=True,
        view=LensView("_plots.html", "app.js", placement="page"),
    ),
)
