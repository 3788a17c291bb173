"""Checkpoints per vmap call on a CPU: the activation cap against none, in the same run.

``estimate_llc_many`` on 16 random-weight checkpoints of a built-in task, three ways, each
the best of ``--repeats``: with the cap (``analysis.llc.budgets.CPU_ACTIVATION_BYTES``, the
default), without it (all 16 in one call), and one checkpoint per call. Prints milliseconds
per checkpoint, the checkpoints per call the cap chose, and the ratios.

    .venv/bin/python bench/checkpoints_per_call.py                        # attention_lm, demo
    .venv/bin/python bench/checkpoints_per_call.py --tasks attention_lm --draws 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import phaseboard.analysis.llc as llc  # noqa: E402
import phaseboard.analysis.llc.budgets as budgets  # noqa: E402 - the cap lives here
from phaseboard.analysis.tasks import get_task  # noqa: E402
from phaseboard.server.commands.demo import FULL_CONFIG  # noqa: E402
from phaseboard.server.jobs.allocator import reuse_freed_memory  # noqa: E402

CONFIGS = {"modular_addition": dict(FULL_CONFIG), "attention_lm": {}}


def per_checkpoint_s(task, models, config: llc.LLCConfig, per_call: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per checkpoint, best of ``repeats`` (after one warm-up)."""

    def once() -> float:
        t0 = time.perf_counter()
        llc.estimate_llc_many(
            models,
            task.loss,
            task.batches("train", config.batch_size, seed=0),
            config,
            max_batch=per_call * (config.num_chains + 1),
        )
        return (time.perf_counter() - t0) / len(models)

    once()
    return min(once() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(CONFIGS))
    ap.add_argument("--checkpoints", type=int, default=16)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as a local worker runs
    reuse_freed_memory(64)
    config = llc.LLCConfig(
        num_chains=4, num_draws=args.draws, num_samples=4096, batch_size=64
    )  # the jobs' defaults (planning.DEFAULT_LLC), fewer draws
    cap = budgets.CPU_ACTIVATION_BYTES
    for name in args.tasks:
        task = get_task(name, CONFIGS.get(name, {}))
        models = []
        for seed in range(args.checkpoints):
            torch.manual_seed(seed)
            models.append(task.build_model())
        batch = next(iter(task.batches("train", config.batch_size, seed=0)))
        chosen = llc.checkpoints_per_call(
            models[0], task.loss, batch, config, config.num_chains, args.checkpoints
        )
        n = args.checkpoints
        capped = per_checkpoint_s(task, models, config, n, args.repeats)
        budgets.CPU_ACTIVATION_BYTES = 1 << 62  # no cap: every checkpoint in one call
        try:
            uncapped = per_checkpoint_s(task, models, config, n, args.repeats)
            alone = per_checkpoint_s(task, models, config, 1, args.repeats)
        finally:
            budgets.CPU_ACTIVATION_BYTES = cap
        print(
            f"{name}: cap chose {chosen} per call: {capped * 1e3:.0f} ms/checkpoint; all {n} in "
            f"one call {uncapped * 1e3:.0f} ms; one per call {alone * 1e3:.0f} ms. "
            f"Cap vs none {uncapped / capped:.2f}x, vs one per call {alone / capped:.2f}x"
        )


if __name__ == "__main__":
    main()
