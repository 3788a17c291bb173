"""Does ``torch.compile`` of the sampler's vmapped step pay for itself within a job?

Wraps ``analysis.llc.sampler._pass_step`` (the vmapped gradient of one pass) in
``torch.compile(dynamic=False)`` for the timed runs only, and measures in one process:

- the first compiled call (tracing the vmapped gradient, inductor's C++ code generation
  and compilation) and a second call at another shape (two checkpoints per call instead of
  one: a recompile, as every new chunk size or batch shape would cause);
- the steady time per chain-step, compiled and eager (interleaved rounds, CPU time of this
  process and wall clock);
- the chain-steps after which compiling has paid back, against a typical job's: the demo's
  LLC job, 4 chains x (20 burn-in + 100 draws) x 3 groups (the estimate and its two bias
  checks) = 1,440 row-steps per checkpoint.

    .venv/bin/python bench/compile_payback.py --case modadd
    .venv/bin/python bench/compile_payback.py --case rrr
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, Case  # noqa: E402

from phaseboard.analysis.llc import LLCConfig, sampler  # noqa: E402

TYPICAL_JOB_ROW_STEPS = 4 * (20 + 100) * 3
_EAGER_STEP = sampler._pass_step


def _compiled_step(wrapper, ps, K):  # type: ignore[no-untyped-def]
    return torch.compile(_EAGER_STEP(wrapper, ps, K), dynamic=False)


def run(case: Case, steps: int, checkpoints: int, compiled: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of a run of ``steps`` burn-in steps over ``checkpoints`` copies."""
    cfg = LLCConfig(
        lr=case.lr, n_beta=case.n_beta, localization=case.localization,
        num_chains=case.chains, num_draws=1, num_burnin_steps=steps - 1,
        batch_size=case.batch_size,
    )  # fmt: skip
    sd = {**dict(case.model.named_parameters()), **dict(case.model.named_buffers())}
    sampler._pass_step = _compiled_step if compiled else _EAGER_STEP
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        sampler._run_sgld(
            case.model, case.loss, case.batches(0), cfg, [sd] * checkpoints, [None],
            [cfg.lr], [cfg.localization], None,
        )  # fmt: skip
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        sampler._pass_step = _EAGER_STEP


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--case", choices=sorted(CASES), default="modadd")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    case = CASES[args.case]()
    C = case.chains
    print(f"case {case.name}: {case.num_params:,} params, {C} chains, {args.steps} steps per run")
    run(case, 5, 1, compiled=False)  # eager warm-up (torch.func's first call)
    first, _ = run(case, 5, 1, compiled=True)
    second, _ = run(case, 5, 2, compiled=True)
    print(f"first compiled call {first:.1f} s; at a new shape (2 checkpoints) {second:.1f} s")
    wall: dict[str, list[float]] = {"eager": [], "compiled": []}
    cpu: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        for name in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            w, c = run(case, args.steps, 1, compiled=name == "compiled")
            wall[name].append(w / (C * args.steps) * 1e3)
            cpu[name].append(c / (C * args.steps) * 1e3)
    for name in wall:
        print(
            f"{name:9s} {statistics.median(wall[name]):7.3f} ms per chain-step (wall), "
            f"{statistics.median(cpu[name]):7.3f} (CPU)"
        )
    saved = statistics.median(wall["eager"]) - statistics.median(wall["compiled"])
    if saved <= 0:
        print("compiled is not faster per chain-step: it never pays back")
        return
    payback = first / (saved / 1e3)
    print(
        f"saves {saved:.3f} ms per chain-step: the first compile pays back after "
        f"{payback:,.0f} chain-steps = {payback / TYPICAL_JOB_ROW_STEPS:.1f} typical jobs "
        f"({TYPICAL_JOB_ROW_STEPS:,} row-steps each), every new shape after "
        f"{second / (saved / 1e3):,.0f} more"
    )


if __name__ == "__main__":
    main()
