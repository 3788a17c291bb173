"""The ``influence`` lens: the Bayesian influence function (BIF) over a whole trajectory.

Per checkpoint, the correlation over posterior draws between the losses of probe examples
(the test split's first ``probe_examples``) and training examples (the first
``train_examples`` of the training set): positive, the training example helps the probe
(a step that lowers one lowers the other), negative, they compete
(``analysis.influence.bayesian_influence``). Every checkpoint not sampled before goes through
one batched SGLD run with the run's LLC settings; the chains' spread gives each entry a
standard error. Over training, intervals where many significant influences flip sign are
stage-boundary candidates (``turning_points``, source ``influence``), read by the phases lens.

The result (one per rerun, as checkpoints arrive) keeps, inline, the examples' texts (decoded
with the run's tokenizer on token tasks, else token ids: ``Task.describe_examples``) and per
step the LLC verdict of the run the influences come from; its ``data_blob`` (.npz) holds per
step the (probe x train) correlations, their standard errors, and each probe's most and
least influential training examples.
"""

from __future__ import annotations

from typing import Any

from phaseboard.server.jobs.handlers import JobContext, ResultRows, finite
from phaseboard.server.jobs.planning import PlanContext
from phaseboard.server.lenses._registry import Lens, LensView
from phaseboard.server.lenses._sampled import (
    attach_decoder,
    batch_size,
    concat_batches,
    lens_config,
    npz_blob,
    progress_for,
    trajectory,
)
from phaseboard.server.lenses.llc import max_rows, sampler_config, train_batches

# observe_every: the examples' losses are taken at every 3rd draw. SGLD draws a step apart
# are strongly correlated, so this cuts the observed forward passes to a third for a small
# loss of precision (both measured in bench/RESULTS.md, "Influence lenses").
DEFAULTS: dict[str, Any] = {
    "probe_examples": 32,
    "train_examples": 128,
    "top_k": 10,
    "observe_every": 3,
}
# A sign change counts when both ends are this many standard errors from zero, and an
# interval is a boundary when at least this share of the significant pairs flip.
SIGN_Z = 2.0
MIN_FLIP_FRACTION = 0.05


def influence_config(plan: PlanContext) -> dict[str, Any]:
    """The run's LLC settings and the example counts (``analysis_config.influence``)."""
    return lens_config(plan, "influence", DEFAULTS)


def _examples(task: Any, n_probe: int, n_train: int) -> tuple[Any, Any, str]:
    from phaseboard.analysis.essential_dynamics import probe_batch, probe_split

    probe = probe_batch(task, max_examples=n_probe, split="test")
    train = task.datasets()["train"][:n_train]
    return probe, train, probe_split(task, "test")


def run_influence(ctx: JobContext) -> ResultRows:
    import numpy as np

    from phaseboard.analysis.influence import bayesian_influence_many, sign_change_boundaries

    task = ctx.task()
    attach_decoder(ctx, task)  # token tasks: the examples' texts decoded
    config = sampler_config(ctx, ctx.config["llc"])
    top_k = int(ctx.config.get("top_k", DEFAULTS["top_k"]))
    probe, train, split = _examples(
        task, int(ctx.config["probe_examples"]), int(ctx.config["train_examples"])
    )
    n_p, n_t = batch_size(probe), batch_size(train)
    found = trajectory(ctx, "influence", "data_blob")
    new_rows: dict[str, dict[str, Any]] = {}
    if found.new:
        template = task.build_model()
        results = bayesian_influence_many(
            [state for _, _, state in found.new],
            task.loss,
            train_batches(ctx, "train", config),
            concat_batches(probe, train),
            config,
            per_example_loss=task.per_example_loss,
            model=template,
            observe_every=int(ctx.config.get("observe_every", DEFAULTS["observe_every"])),
            max_rows=max_rows(ctx, template, config),
            progress=progress_for(ctx),
            chance_loss=task.chance_loss(),
        )
        rows, cols = list(range(n_p)), list(range(n_p, n_p + n_t))
        for (_, sha, _), res in zip(found.new, results, strict=True):
            corr = res.block(rows, cols).float()
            # The jackknife over chains: the stacked matrix carries the chains' offsets,
            # which the spread of each chain's own matrix never sees (NaN below two chains).
            se = res.matrix_se(rows, cols).float()
            new_rows[sha] = {
                "corr": corr.numpy(),
                "se": se.numpy(),
                "llc": [finite(res.llc.mean), finite(res.llc.std)],
                "verdict": res.llc.verdict,
            }
    corr = np.full((len(found.steps), n_p, n_t), np.nan, dtype=np.float32)
    se = np.full_like(corr, np.nan)
    llc, verdicts = [], []
    prev_verdicts = found.previous_values.get("verdict", [])
    prev_llc = found.previous_values.get("llc", [])
    for k, sha in enumerate(found.shas):
        if sha in new_rows:
            row = new_rows[sha]
            corr[k], se[k] = row["corr"], row["se"]
            llc.append(row["llc"])
            verdicts.append(row["verdict"])
        else:
            i = found.reused[sha]
            corr[k], se[k] = found.previous["corr"][i], found.previous["se"][i]
            llc.append(prev_llc[i])
            verdicts.append(prev_verdicts[i])
    ranked = np.where(np.isfinite(corr), corr, np.nan)
    k = min(top_k, n_t)
    with np.errstate(invalid="ignore"):
        top = np.argsort(-np.nan_to_num(ranked, nan=-np.inf), axis=2)[:, :, :k]
        bottom = np.argsort(np.nan_to_num(ranked, nan=np.inf), axis=2)[:, :, :k]
    names = [f"test {i} / train {j}" for i in range(n_p) for j in range(n_t)]
    boundaries = sign_change_boundaries(
        found.steps, corr.reshape(len(found.steps), -1).T, se.reshape(len(found.steps), -1).T,
        source="influence", names=names, z=SIGN_Z, min_fraction=MIN_FLIP_FRACTION,
    )  # fmt: skip
    blob = npz_blob(
        ctx.store,
        {"corr": corr, "se": se, "top": top.astype(np.int32), "bottom": bottom.astype(np.int32)},
    )
    values = {
        "steps": found.steps,
        "checkpoint_sha256": found.shas,
        "config_hash": found.config_hash,
        "probe_split": split,
        "probe_texts": task.describe_examples(probe),
        "train_texts": task.describe_examples(train),
        "top_k": k,
        "llc": llc,  # [mean, std] of the same SGLD run, per step
        "verdict": verdicts,
        "data_blob": blob,  # .npz: corr, se (steps, probe, train), top, bottom (steps, probe, k)
        "turning_points": [b.to_dict() for b in boundaries],
        "skipped_steps": found.skipped,
        "sampled_now": len(new_rows),  # checkpoints this rerun sampled (the rest reused)
    }
    return [{"restriction": "", "values": values}]


LENSES = (
    Lens(
        name="influence",
        title="Bayesian influence",
        scope="run",
        description="Which training examples help or compete with each probe example (the "
        "Bayesian influence function: correlations of losses over SGLD draws), at every "
        "checkpoint, and where influences change sign.",
        handler=run_influence,
        config=influence_config,
        lane="heavy",
        min_checkpoints=1,
        rerun="checkpoints",
        result_blobs=("data_blob",),
        feeds_phases=True,  # its sign changes are boundary candidates
        view=LensView("_influence.html", "influence.js", order=50),
    ),
)
