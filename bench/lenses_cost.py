"""Benchmark: cost per checkpoint of each lens beside one LLC estimate, same process.

For every built-in task with lenses, on a freshly built model (random weights), times:
- essential dynamics: the outputs on the probe set (128 examples; one forward pass),
- progress measures: ``Task.progress_measures`` (the metrics job adds them),
- learning order: the per-example loss on the probe set (1024 training examples),
- the baseline, one full-model LLC estimate with the jobs' default SGLD config
  (``server.jobs.planning.DEFAULT_LLC``: 4 chains x 100 draws, batch 64),
and prints each lens's time and its ratio to the LLC's (median of ``--repeats``).

    .venv/bin/python bench/lenses_cost.py
    .venv/bin/python bench/lenses_cost.py --tasks modular_addition --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phaseboard.analysis.essential_dynamics import probe_batch, probe_outputs  # noqa: E402
from phaseboard.analysis.learning_order import per_example_losses  # noqa: E402
from phaseboard.analysis.llc import LLCConfig, estimate_llc  # noqa: E402
from phaseboard.analysis.tasks import get_task  # noqa: E402
from phaseboard.server.jobs.planning import DEFAULT_LLC  # noqa: E402


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up (first-call allocations, lazy imports)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_task(name: str, repeats: int) -> tuple[float, float, float, float]:
    """(LLC, ED outputs, progress measures, per-example loss) seconds for one checkpoint."""
    task = get_task(name)
    torch.manual_seed(0)
    model = task.build_model().eval()
    ed_probe = probe_batch(task, max_examples=128)
    lo_probe = probe_batch(task, max_examples=1024, split="train")
    config = LLCConfig.from_dict({**DEFAULT_LLC, "num_samples": task.num_train})

    def llc() -> object:
        batches = task.batches("train", config.batch_size, seed=config.seed)
        return estimate_llc(model, task.loss, batches, config)

    return (
        median_time(llc, max(1, repeats // 2)),
        median_time(lambda: probe_outputs(task, model, ed_probe), repeats),
        median_time(lambda: task.progress_measures(model), repeats),
        median_time(lambda: per_example_losses(task, model, lo_probe), repeats),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="modular_addition,attention_lm,tms")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CI box: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print(
        "| task | LLC estimate | ED outputs | progress measures | per-example loss | lenses / LLC |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        t_llc, t_ed, t_pm, t_lo = bench_task(name, args.repeats)
        lenses = t_ed + t_pm + t_lo
        print(
            f"| {name} | {t_llc * 1e3:.0f} ms | {t_ed * 1e3:.1f} ms | {t_pm * 1e3:.1f} ms "
            f"| {t_lo * 1e3:.1f} ms | {lenses / t_llc:.3f} |"
        )


if __name__ == "__main__":
    main()
