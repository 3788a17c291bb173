"""The ``essential_dynamics`` lens: per run, the model's outputs on the task's probe set at
every checkpoint, PCA over checkpoints, and the path's turning points
(``analysis.essential_dynamics``). Its jobs are keyed by a fingerprint of the run's
checkpoints, so it reruns as checkpoints arrive; it is cheap (one forward pass per
checkpoint), so it is automatic by default. It waits for a second checkpoint: a path needs
two points.
"""

from __future__ import annotations

from typing import Any

from phaseboard.server.jobs.handlers import (
    JobContext,
    ResultRows,
    at_each_checkpoint,
    npy_blob,
    usable_checkpoints,
)
from phaseboard.server.jobs.planning import PlanContext, config_hash
from phaseboard.server.lenses._registry import Lens, LensView

MIN_CHECKPOINTS = 2
# Largest outputs matrix (checkpoints x output values) kept as a blob for the cross-run
# views: 2^25 float16 values = 64 MiB. Beyond it the result says why there is no blob.
MAX_OUTPUT_BLOB_VALUES = 2**25


def essential_dynamics_config(plan: PlanContext) -> dict[str, Any]:
    """128 probe examples unless the run's ``analysis_config.essential_dynamics`` says."""
    return {"probe_examples": 128, **plan.run_config("essential_dynamics")}


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

    task = ctx.task()
    ckpts = usable_checkpoints(ctx.db, ctx.run_id)
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
    steps, outputs, skipped = at_each_checkpoint(
        ctx, ckpts, lambda model: probe_outputs(task, model, probe, device=ctx.device),
        "outputs", MIN_CHECKPOINTS,
    )  # fmt: skip
    matrix = np.stack(outputs)  # (checkpoints, output values), rows by step
    ed = essential_dynamics(steps, matrix)
    values = {**ed.to_dict(), "probe_examples": n_probe, "output_dim": int(outputs[0].size)}
    values["probe"] = probe_id
    values["skipped_steps"] = skipped  # checkpoints with non-finite parameters
    if matrix.size <= MAX_OUTPUT_BLOB_VALUES:
        values["outputs_blob"] = npy_blob(ctx, matrix)  # float16 .npy, checkpoints x D
    else:
        values["outputs_blob"] = None
        values["outputs_skipped"] = (
            f"outputs matrix of {matrix.size} values is over {MAX_OUTPUT_BLOB_VALUES}: not kept"
        )
    return [{"restriction": "", "values": values}]


LENSES = (
    Lens(
        name="essential_dynamics",
        title="essential dynamics",
        scope="run",
        description="The path of the model's outputs on a probe set through training, in PCA "
        "space, and its turning points.",
        handler=run_essential_dynamics,
        config=essential_dynamics_config,
        lane="fast",
        min_checkpoints=MIN_CHECKPOINTS,
        auto=True,
        rerun="checkpoints",
        result_blobs=("outputs_blob",),  # outputs on the probe set, checkpoints x D
        feeds_phases=True,  # its turning points are boundary candidates
        view=LensView("_lens_essential_dynamics.html", "lens_essential_dynamics.js", order=10),
    ),
)
