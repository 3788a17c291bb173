"""The ``learning_order`` lens: per run, the loss of each probe example (default: the first
1024 training examples) at every checkpoint, kept as one float16 array in the blob store,
and each example's learned-at step (``analysis.learning_order``). Rerun as checkpoints
arrive, like essential dynamics; it waits for a second checkpoint.
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
from phaseboard.server.jobs.planning import PlanContext
from phaseboard.server.lenses._registry import Lens, LensView

MIN_CHECKPOINTS = 2


def learning_order_config(plan: PlanContext) -> dict[str, Any]:
    """Defaults under the run's ``analysis_config.learning_order``."""
    cfg = {"probe_examples": 1024, "split": "train", "relative_threshold": 0.1}
    return {**cfg, **plan.run_config("learning_order")}


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
    ckpts = usable_checkpoints(ctx.db, ctx.run_id)
    n_probe = int(ctx.config.get("probe_examples", 1024))
    split = str(ctx.config.get("split", "train"))
    probe = probe_batch(task, max_examples=n_probe, split=split)
    steps, rows, skipped = at_each_checkpoint(
        ctx, ckpts, lambda model: per_example_losses(task, model, probe, device=ctx.device),
        "per-example loss", MIN_CHECKPOINTS,
    )  # fmt: skip
    losses = np.stack(rows)  # (checkpoints, examples)
    learned, threshold = learned_at(
        steps,
        losses,
        threshold=ctx.config.get("threshold"),
        relative_threshold=float(ctx.config.get("relative_threshold", 0.1)),
    )
    values = {
        "steps": steps,
        "split": split,
        "n_examples": int(losses.shape[1]),
        "threshold": threshold,
        "learned_at": [None if not np.isfinite(v) else float(v) for v in learned],
        "order": [int(i) for i in order_by_learned_at(learned)],
        "n_learned": int(np.isfinite(learned).sum()),
        "losses_blob": npy_blob(ctx, losses),  # float16 .npy, checkpoints x examples
        "skipped_steps": skipped,  # checkpoints with non-finite parameters
    }
    return [{"restriction": "", "values": values}]


LENSES = (
    Lens(
        name="learning_order",
        title="learning order",
        scope="run",
        description="When each probe example is learned, from its loss at every checkpoint.",
        handler=run_learning_order,
        config=learning_order_config,
        lane="fast",
        min_checkpoints=MIN_CHECKPOINTS,
        auto=True,
        rerun="checkpoints",
        result_blobs=("losses_blob",),  # per-example losses, checkpoints x examples
        view=LensView("_lens_learning_order.html", "lens_learning_order.js", order=30),
    ),
)
