"""Precision per second: the wall time each LLC estimator needs to reach 2 % (and 5 %) error.

For one case (``bench/cases.py``):

1. A long reference run fixes the LLC "truth": Phaseboard's sampler with many chains, many
   draws and a burn-in that is discarded; its own error is the standard error over its
   (independent) chains. Cached under ``bench/out/`` (it is the slow part). The DLN also
   has Aoyagi's exact lambda, printed beside it (the sampler's localization bias is the gap).
2. Every estimator (``bench/estimators.py``) gets one untimed warm-up call, then runs the
   case once per seed at ``--draws`` after the case's burn-in (and once at an eighth of
   the draws without burn-in, for its fixed cost per call),
   all in this process, estimators interleaved and their order rotated every round.
3. SGLD is causal, so the estimate an estimator would have returned after d draws is
   computed from the first d draws of its run; its time at d is the line through its timed
   calls: a fixed cost per call plus a cost per step, for the case's burn-in + d steps
   (a burn-in step costs like a draw: for Phaseboard, whose burn-in steps skip the
   reference forward, this overstates its time a little). The error at d is the root mean
   square over seeds of (estimate - truth) / truth: seed-to-seed spread and bias together,
   less the reference's own variance. With a few seeds it is itself uncertain (about
   1 / sqrt(2 x seeds) relative): read the times as factors, not digits.
4. Printed per estimator: the draws and the seconds after which the error stays below 5 %
   and 2 %, the ratios of those seconds to Phaseboard's, and the kernel-like ops per
   chain-step (``bench/profile_ops.py``; the GPU proxy).

``--error spread`` skips the reference run and takes the error from each call's own chains
(std over chains / sqrt(chains), relative to the runs' mean): precision alone, no bias, for a
case whose reference run does not fit the time at hand (the ``llc@D`` column shows each
estimator's mean, where a bias shows as a gap). ``--burnin`` shortens every call's burn-in.

``devinterp-no-burnin`` is not a run of its own: devinterp's chains with the burn-in steps
left out of the mean (its ``llc()`` averages them in). The last line compares, on
Phaseboard's fast chains, the paired reference (L_m(w*) on each draw's minibatch) with
L(w*) on the training set: whether the reference forward pays for itself.

    TQDM_DISABLE=1 .venv/bin/python bench/precision.py --case dln
    TQDM_DISABLE=1 .venv/bin/python bench/precision.py --case modadd
    TQDM_DISABLE=1 .venv/bin/python bench/precision.py --case neox --draws 200 --seeds 4
    TQDM_DISABLE=1 .venv/bin/python bench/precision.py --case neox --device cuda --threads 0
    TQDM_DISABLE=1 .venv/bin/python bench/precision.py --case neox --error spread --burnin 40 \
        --draws 80 --seeds 2 --estimators phaseboard-fast,phaseboard-fastest,devinterp,canonical
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import estimators as E  # noqa: E402
from cases import CASES, OUT, Case  # noqa: E402
from profile_ops import kernel_ops  # noqa: E402

from phaseboard.analysis.llc import LLCConfig  # noqa: E402
from phaseboard.analysis.llc.sampler import _run_sgld  # noqa: E402

DEFAULT_DRAWS = {"neox": 200, "modadd": 400, "dln": 2000, "rrr": 2000}
REFERENCE = {  # case -> (chains, draws kept, burn-in discarded)
    "neox": (24, 1000, 200),
    "modadd": (32, 4000, 1000),
    "dln": (64, 40000, 10000),
    "rrr": (64, 40000, 10000),
}


@dataclass
class Truth:
    value: float
    stderr: float
    chains: int
    draws: int
    burnin: int
    seconds: float
    exact: float | None = None


def reference(case: Case, device: str, chains: int, draws: int, burnin: int) -> Truth:
    """The long run (cached): per-chain paired LLC over the kept draws, mean and its
    standard error over the chains (independent: each draws its own minibatches)."""
    key = f"ref_{case.name}_{case.lr:g}_{case.localization:g}_{case.n_beta:.4g}_{case.batch_size}"
    path = OUT / f"precision_{key}_{chains}x{draws}+{burnin}.json"
    if path.exists():
        return Truth(**json.loads(path.read_text()))
    cfg = LLCConfig(
        lr=case.lr, n_beta=case.n_beta, localization=case.localization, num_chains=chains,
        num_draws=draws, num_burnin_steps=burnin, batch_size=case.batch_size, seed=12345,
        device=device,
    )  # fmt: skip
    sd = {**dict(case.model.named_parameters()), **dict(case.model.named_buffers())}
    t0 = time.perf_counter()
    every = max(1, cfg.total_steps // 20)

    def progress(done: int, total: int, _msg: str) -> None:
        if done % every == 0:
            elapsed = time.perf_counter() - t0
            print(f"  reference: step {done}/{total} ({elapsed:.0f} s)", flush=True)

    out = _run_sgld(
        case.model, case.loss, case.batches(12345), cfg, [sd], [None], [cfg.lr],
        [cfg.localization], progress,
    )  # fmt: skip
    per_chain = case.n_beta * (out.traces[0, 0].double() - out.ref[0, 0].double()).mean(1)
    truth = Truth(
        value=float(per_chain.mean()),
        stderr=float(per_chain.std() / math.sqrt(chains)),
        chains=chains, draws=draws, burnin=burnin, seconds=time.perf_counter() - t0,
        exact=case.exact_llc,
    )  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(truth)))
    return truth


@dataclass
class Record:
    runs: list[E.Run] = field(default_factory=list)  # at --draws, one per seed
    timings: list[tuple[int, float]] = field(default_factory=list)  # (draws, seconds)
    first_call_s: float = math.nan
    ops_per_chain_step: float = math.nan
    note: str = ""


def fit_time(timings: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line seconds = fixed + per_draw * draws (fixed clipped at 0)."""
    xs, ys = [d for d, _ in timings], [s for _, s in timings]
    if len(set(xs)) < 2:
        return 0.0, ys[0] / xs[0]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    fixed = max(0.0, my - slope * mx)
    return fixed, slope


def errors(runs: list[E.Run], truth: Truth, grid: list[int]) -> list[float]:
    """Root mean square relative error over the runs (seeds) at each number of draws, the
    reference's own variance taken out (E[(x - ref)^2] = E[(x - truth)^2] + var(ref))."""
    out = []
    for d in grid:
        mse = statistics.fmean([(r.estimate(d) - truth.value) ** 2 for r in runs])
        out.append(math.sqrt(max(mse - truth.stderr**2, 0.0)) / abs(truth.value))
    return out


def spread_errors(runs: list[E.Run], grid: list[int]) -> list[float]:
    """Relative standard error of one call from its chains' spread (independent chains:
    std over chains / sqrt(chains)), root mean square over the runs, over the runs' mean
    estimate. No reference run and no bias: a shared init loss's own error (devinterp,
    canonical-interp, the sequential loop) and the burn-in devinterp averages in are not
    in it."""
    out = []
    for d in grid:
        per = [r.per_chain(d) for r in runs]
        mean = statistics.fmean(float(x.mean()) for x in per)
        var = statistics.fmean(float(x.var()) / len(x) for x in per)
        out.append(math.sqrt(var) / abs(mean))
    return out


def draws_to(errs: list[float], grid: list[int], target: float) -> int | None:
    """The first number of draws after which the error stays below ``target``."""
    for i, d in enumerate(grid):
        if all(e <= target for e in errs[i:]):
            return d
    return None


def ops_per_chain_step(run: E.Estimator, case: Case, few: int) -> float:
    """Kernel-like ops per chain-step: the difference between calls at 2 * few and few
    draws (fixed costs per call cancel), over chains x few."""
    n1, _ = kernel_ops(lambda: run(case, few, 0))
    n2, _ = kernel_ops(lambda: run(case, 2 * few, 0))
    return (n2 - n1) / (case.chains * few)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--case", choices=sorted(CASES), default="dln")
    p.add_argument("--draws", type=int, default=None, help="draws per timed call")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument(
        "--burnin", type=int, default=None, help="burn-in steps of every call (default: the case's)"
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave)")
    p.add_argument(
        "--estimators", default="phaseboard,phaseboard-fast,phaseboard-fastest,devinterp,"
        "canonical,sequential",
    )  # fmt: skip
    p.add_argument(
        "--error", choices=["reference", "spread"], default="reference",
        help="error against the cached reference run, or from each call's chain spread",
    )  # fmt: skip
    p.add_argument("--no-ops", action="store_true", help="skip the op-count profile")
    p.add_argument(
        "--reference", default=None, help="CHAINSxDRAWS+BURNIN of the reference run"
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    draws = args.draws or DEFAULT_DRAWS[args.case]
    case = CASES[args.case](device=args.device)
    if args.burnin is not None:
        case = dataclasses.replace(case, burnin=args.burnin)
    print(
        f"case {case.name}: {case.num_params:,} params, {case.chains} chains, batch "
        f"{case.batch_size}, lr {case.lr:g}, localization {case.localization:g}, n_beta "
        f"{case.n_beta:.1f}; device {args.device}, threads {torch.get_num_threads()}; "
        f"{args.seeds} seeds x {draws} draws after {case.burnin} burn-in; load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )

    available: dict[str, E.Estimator] = {}
    for name in args.estimators.split(","):
        missing = {"devinterp": E.devinterp_missing, "canonical": E.canonical_missing}.get(
            name, lambda: None
        )()
        if missing:
            print(f"skip {name}: {missing}")
            continue
        available[name] = {
            "phaseboard": lambda: E.phaseboard(False, args.device),
            "phaseboard-fast": lambda: E.phaseboard(True, args.device),
            "phaseboard-bf16": lambda: E.phaseboard(True, args.device, dtype="bfloat16"),
            "phaseboard-fastest": lambda: E.phaseboard_kernel(args.device),
            "devinterp": lambda: E.devinterp(args.device),
            "canonical": lambda: E.canonical(args.device),
            "sequential": lambda: E.sequential(args.device),
        }[name]()

    chains, ref_draws, burnin = REFERENCE[args.case]
    if args.reference:
        size, burnin_s = args.reference.split("+")
        chains, ref_draws = (int(x) for x in size.split("x"))
        burnin = int(burnin_s)
    truth: Truth | None = None
    if args.error == "reference":
        truth = reference(case, args.device, chains, ref_draws, burnin)
        exact = f"; exact lambda {truth.exact:g}" if truth.exact is not None else ""
        print(
            f"truth: {truth.value:.4f} ± {truth.stderr:.4f} "
            f"({truth.stderr / abs(truth.value):.2%}): Phaseboard, {truth.chains} chains x "
            f"{truth.draws} draws after {truth.burnin} burn-in, {truth.seconds:.0f} s{exact}",
            flush=True,
        )
    else:
        print("error: each call's chain spread (no reference run; bias not counted)")

    def error_at(runs: list[E.Run], grid: list[int]) -> list[float]:
        return errors(runs, truth, grid) if truth is not None else spread_errors(runs, grid)

    records = {name: Record() for name in available}
    no_burnin = dataclasses.replace(case, burnin=0)
    # Warm-up: first-call costs (imports, compiles), burn-in and draw steps both, kept short.
    warm = dataclasses.replace(case, burnin=min(case.burnin, 2))
    for name, run in available.items():
        t0 = time.perf_counter()
        run(warm, max(2, draws // 50), 99)
        records[name].first_call_s = time.perf_counter() - t0
    short = max(2, draws // 8)
    names = list(available)
    for r in range(args.seeds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            run = available[name]
            out = run(case, draws, r)
            records[name].runs.append(out)
            records[name].timings.append((case.burnin + draws, out.seconds))
            short_s = run(no_burnin, short, 100 + r).seconds  # for the fixed cost per call
            records[name].timings.append((short, short_s))
        done = ", ".join(f"{n} {records[n].runs[-1].seconds:.1f} s" for n in order)
        print(f"round {r + 1}/{args.seeds}: {done}; load {os.getloadavg()[0]:.1f}", flush=True)

    if "devinterp" in available and case.burnin:  # its chains without the burn-in steps
        records["devinterp-no-burnin"] = Record(
            runs=[
                E.Run(x.trace[:, case.burnin :], x.init, x.n_beta, x.seconds)
                for x in records["devinterp"].runs
            ],
            timings=records["devinterp"].timings,
            note="devinterp's chains with its burn-in steps left out of the mean",
        )
    pairing = ""
    if "phaseboard-fast" in available:  # the same chains, L(w*) once instead of paired
        runs = records["phaseboard-fast"].runs
        full = torch.tensor([[case.full_loss()]])
        unpaired = [E.Run(x.trace, full, x.n_beta, x.seconds) for x in runs]
        paired_err, unpaired_err = (
            error_at(runs, [draws])[0],
            error_at(unpaired, [draws])[0],
        )
        ref_noise = statistics.fmean(float(x.init.std(1).mean()) * x.n_beta for x in runs)
        diff_noise = statistics.fmean(
            float((x.trace - x.init).std(1).mean()) * x.n_beta for x in runs
        )
        pairing = (
            f"pairing (phaseboard-fast's chains): error at {draws} draws {paired_err:.2%} paired, "
            f"{unpaired_err:.2%} with L(w*) on the training set instead; per draw, n_beta x "
            f"std of L_m(w*) {ref_noise:.3g} against n_beta x std of L_m(w) - L_m(w*) "
            f"{diff_noise:.3g}"
        )

    if not args.no_ops:
        few = 3
        for name, run in available.items():
            records[name].ops_per_chain_step = ops_per_chain_step(run, no_burnin, few)

    grid = sorted({max(1, round(draws * f / 40)) for f in range(1, 41)})
    print()
    print(
        f"{'estimator':20s} {'s/call':>8s} {'fixed s':>8s} {'s/step':>8s} {'llc@D':>8s} "
        f"{'err@D':>7s} {'d(5%)':>6s} {'t(5%)':>8s} {'d(2%)':>6s} {'t(2%)':>8s} "
        f"{'ops/chain-step':>14s}"
    )
    summary = {}
    for name, rec in records.items():
        fixed, per_step = fit_time(rec.timings)
        errs = error_at(rec.runs, grid)
        row = {"fixed_s": fixed, "per_step_s": per_step, "err_at_max": errs[-1]}

        def seconds(d: float, fixed: float = fixed, per_step: float = per_step) -> float:
            return fixed + per_step * (case.burnin + d)

        cells = []
        for target in (0.05, 0.02):
            d = draws_to(errs, grid, target)
            if d is None:  # extrapolate as 1 / sqrt(draws) from the last point
                d_est = draws * (errs[-1] / target) ** 2
                row[f"draws_{target}"], row[f"seconds_{target}"] = None, seconds(d_est)
                cells += [f">{draws}", f"~{seconds(d_est):7.1f}"]
            else:
                row[f"draws_{target}"], row[f"seconds_{target}"] = d, seconds(d)
                cells += [f"{d}", f"{seconds(d):8.1f}"]
        secs = statistics.median([s for d, s in rec.timings if d == case.burnin + draws])
        llc = statistics.fmean(x.estimate(draws) for x in rec.runs)
        ops = f"{rec.ops_per_chain_step:14.0f}" if not math.isnan(rec.ops_per_chain_step) else ""
        print(
            f"{name:20s} {secs:8.1f} {fixed:8.2f} {per_step:8.4f} {llc:8.3g} {errs[-1]:7.2%} "
            f"{cells[0]:>6s} {cells[1]:>8s} {cells[2]:>6s} {cells[3]:>8s} {ops}"
        )
        summary[name] = {
            **row, "first_call_s": rec.first_call_s, "ops_per_chain_step": rec.ops_per_chain_step,
            "estimates_at_max": [x.estimate(draws) for x in rec.runs], "note": rec.note,
        }  # fmt: skip
    print()
    for base in ("phaseboard", "phaseboard-fast", "phaseboard-fastest"):
        if base not in summary:
            continue
        for target in (0.05, 0.02):
            ours = summary[base][f"seconds_{target}"]
            ratios = ", ".join(
                f"{n} {s[f'seconds_{target}'] / ours:.2f}x" for n, s in summary.items() if n != base
            )
            print(f"time to {target:.0%}: {base} {ours:.1f} s; others take {ratios}")
    print("first calls (s): " + ", ".join(f"{n} {r.first_call_s:.1f}" for n, r in records.items()))
    if pairing:
        print(pairing)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "case": case.name,
                    "truth": asdict(truth) if truth is not None else None,
                    "error": args.error,
                    "draws": draws,
                    "seeds": args.seeds,
                    "estimators": summary,
                },
                indent=1,
            )  # fmt: skip
        )


if __name__ == "__main__":
    main()
