"""What observing fewer draws costs the influence lenses in precision.

The lenses evaluate their examples at every k-th draw (``observe_every``): the forward
passes over the examples are what they add to the LLC run, so k divides that overhead. Since
observing never changes the chains, one run that observes every draw gives, by thinning its
record, exactly what every k would have given. This bench samples the demo's
modular-addition run (``bench/influence_cost.py``'s checkpoints and settings) once per
checkpoint, observing every draw, and prints per k:

- the median jackknife standard error of the BIF's (probe x train) entries, relative to
  k = 1 (precision lost by thinning: 1.00 is none, sqrt(k) would be independent draws);
- the median |BIF(k) - BIF(1)| in units of that standard error (how far the thinned
  matrix moves from the full one);
- the same for the susceptibilities (per weight group and observable set) where
  ``--susceptibilities`` is given.

    .venv/bin/python bench/influence_thinning.py --cache bench/out/influence_cost_states.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from influence_cost import train  # noqa: E402

from phaseboard.analysis.influence import bayesian_influence_many  # noqa: E402
from phaseboard.analysis.llc import LLCConfig  # noqa: E402
from phaseboard.server.commands.demo import FULL_LLC  # noqa: E402
from phaseboard.server.jobs.planning import DEFAULT_LLC  # noqa: E402
from phaseboard.server.lenses.influence import DEFAULTS as INFLUENCE  # noqa: E402

EVERY = (1, 2, 3, 4, 6, 8, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--use", type=int, default=5, help="checkpoints sampled (spread)")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=None, help="default: the demo's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task, states, train_s = train(args.checkpoints, args.cache)
    picks = sorted({round(i * (len(states) - 1) / max(args.use - 1, 1)) for i in range(args.use)})
    llc = {**DEFAULT_LLC, **FULL_LLC, "bias_checks": False}
    if args.draws:
        llc["num_draws"] = args.draws
    config = LLCConfig(**llc, num_samples=task.num_train)
    print(
        f"demo modular addition, checkpoints {picks} of {len(states)} (trained in "
        f"{train_s:.0f} s); {config.num_chains} chains x {config.num_draws} draws after "
        f"{config.num_burnin_steps} burn-in, lr {config.lr:g}, localization "
        f"{config.localization:g}; {INFLUENCE['probe_examples']} probe x "
        f"{INFLUENCE['train_examples']} training examples; the lens's default k = "
        f"{INFLUENCE['observe_every']}",
        flush=True,
    )
    data = task.datasets()
    n_p, n_t = INFLUENCE["probe_examples"], INFLUENCE["train_examples"]
    probe, train_ex = data["test"][:n_p], data["train"][:n_t]
    examples = tuple(torch.cat([a, b]) for a, b in zip(probe, train_ex, strict=True))
    t0 = time.perf_counter()
    results = bayesian_influence_many(
        [states[i] for i in picks], task.loss, task.batches("train", config.batch_size, seed=0),
        examples, config, per_example_loss=task.per_example_loss, model=task.build_model(),
        observe_every=1,
    )  # fmt: skip
    print(f"sampled in {time.perf_counter() - t0:.1f} s", flush=True)
    rows, cols = slice(0, n_p), slice(n_p, n_p + n_t)
    print(f"{'k':>3} {'draws':>6} {'SE / SE(k=1)':>13} {'|BIF(k) - BIF(1)| / SE':>24}")
    base = [(r.block(rows, cols), r.matrix_se(rows, cols)) for r in results]
    for k in EVERY:
        se_ratio, moved = [], []
        for r, (full, full_se) in zip(results, base, strict=True):
            thin = dataclasses.replace(r, draws=r.draws[:, ::k])
            m, se = thin.block(rows, cols), thin.matrix_se(rows, cols)
            ok = torch.isfinite(m) & torch.isfinite(se) & (full_se > 0) & (se > 0)
            se_ratio.append(float((se[ok] / full_se[ok]).median()))
            moved.append(float(((m[ok] - full[ok]).abs() / se[ok]).median()))
        print(
            f"{k:>3} {results[0].draws[:, ::k].shape[1]:>6} "
            f"{statistics.median(se_ratio):>13.3f} {statistics.median(moved):>24.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
