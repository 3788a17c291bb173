"""Per chain-step: Phaseboard's SGLD kernel against the minimal sequential loop.

The target: per chain-step, with the paired reference forward counted apart, the kernel
(``analysis.llc.sampler._run_sgld``) is never slower than one chain after another in plain
autograd (``bench/sequential_sgld.py``), at 1 and at 2 threads. Timed in one process,
interleaved, ``--rounds`` times. Wall clock and this process's CPU time are both printed:
on a shared machine CPU time is the steadier figure at one thread (time spent waiting for
a core is not counted), while at two threads only the wall clock shows the parallelism:

- ``kernel``: a run of burn-in steps only (one draw at the end): forward, backward and
  update of every chain, less that one draw's reference forward (timed on its own);
- ``kernel+ref``: a run where every step is a draw, per chain-step (what an estimate pays);
- ``reference``: the paired reference forward L_m(w*) alone, per chain;
- ``sequential``: the minimal loop, per chain-step;
- ``kernel@REV`` (``--baseline-rev REV``): the kernel of that commit, same run as ``kernel``;
- ``hand-vectorised`` (deep linear networks only): the same SGLD written by hand for this
  one model, chains as a batch dimension of every weight (``bmm``) and one autograd call
  per step: what per-op overhead leaves of a step when nothing generic is in the way.

It also prints the kernel-like ops per chain-step (``bench/profile_ops.py``, the GPU proxy)
of each, as the difference between runs of two lengths (fixed costs cancel).

    .venv/bin/python bench/sampler_speed.py --case neox --threads 1,2
    .venv/bin/python bench/sampler_speed.py --case modadd --threads 1,2 --baseline-rev 060a194
    .venv/bin/python bench/sampler_speed.py --case neox --dtype bfloat16
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, Case  # noqa: E402
from profile_ops import kernel_ops  # noqa: E402
from sequential_sgld import sequential_sgld  # noqa: E402

from phaseboard.analysis.llc import LLCConfig, sampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = {"neox": 6, "modadd": 100, "dln": 400, "rrr": 1000}


def kernel_at(rev: str) -> ModuleType:
    """``analysis/llc/sampler.py`` as of commit ``rev``, imported inside today's package
    (its relative imports resolve to today's config, result and verdict modules)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:analysis/llc/sampler.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path("/tmp") / f"phaseboard_sampler_{rev}.py"
    path.write_text(source)
    name = f"phaseboard.analysis.llc._sampler_{rev}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "phaseboard.analysis.llc"
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _config(case: Case, steps: int, every_step_a_draw: bool, dtype: str) -> LLCConfig:
    burnin, draws = (0, steps) if every_step_a_draw else (steps - 1, 1)
    return LLCConfig(
        lr=case.lr, n_beta=case.n_beta, localization=case.localization,
        num_chains=case.chains, num_draws=draws, num_burnin_steps=burnin,
        batch_size=case.batch_size, dtype=dtype,
    )  # fmt: skip


def kernel_run(
    case: Case, steps: int, draws: bool, dtype: str, module: ModuleType = sampler
) -> Callable[[], None]:
    cfg = _config(case, steps, draws, dtype)
    sd = {**dict(case.model.named_parameters()), **dict(case.model.named_buffers())}

    def run() -> None:
        module._run_sgld(
            case.model, case.loss, case.batches(0), cfg, [sd], [None], [cfg.lr],
            [cfg.localization], None,
        )  # fmt: skip

    return run


def reference_run(case: Case, dtype: str) -> Callable[[], None]:
    """One draw's reference forward: every chain's minibatch at w*."""
    torch_dtype = getattr(torch, dtype)
    wrapper = sampler._LossModule(sampler._structure_copy(case.model), case.loss)
    tensors = {**dict(case.model.named_parameters()), **dict(case.model.named_buffers())}
    w_star = {
        n: t.detach().to(torch_dtype if t.is_floating_point() else None).unsqueeze(0)
        for n, t in tensors.items()
    }
    ref = sampler._reference_loss(wrapper, w_star, 1)
    it = case.batches(0)
    device = next(case.model.parameters()).device
    batch = sampler._stack_batches(
        [sampler._to_device(next(it), device, torch_dtype) for _ in range(case.chains)]
    )

    def run() -> None:
        with torch.no_grad():
            ref(batch)

    return run


def sequential_run(case: Case, steps: int) -> Callable[[], None]:
    def run() -> None:
        sequential_sgld(
            case.model, case.loss, case.batches, lr=case.lr, n_beta=case.n_beta,
            localization=case.localization, chains=case.chains, draws=steps,
        )  # fmt: skip

    return run


def hand_vectorised_run(case: Case, steps: int) -> Callable[[], None]:
    """A DLN's SGLD by hand: weights (C, out, in), the product by ``bmm``, one backward."""
    C = case.chains
    w_star = [p.detach().unsqueeze(0).repeat(C, 1, 1) for p in case.model.parameters()]
    target = case.notes["w0"]
    drift, pull = -case.lr / 2 * case.n_beta, -case.lr / 2 * case.localization
    noise_scale = case.lr**0.5

    def run() -> None:
        gen = torch.Generator(device=w_star[0].device).manual_seed(0)
        ws = [w.clone().requires_grad_() for w in w_star]
        for _ in range(steps):
            product = ws[0]
            for w in ws[1:]:
                product = torch.bmm(w, product)
            loss = 0.5 * ((product - target) ** 2).sum((1, 2))  # (C,)
            grads = torch.autograd.grad(loss.sum(), ws)
            with torch.no_grad():
                for w, g, w0 in zip(ws, grads, w_star, strict=True):
                    noise = torch.randn(w.shape, generator=gen, device=w.device)
                    w.add_(w - w0, alpha=pull).add_(g, alpha=drift).add_(noise, alpha=noise_scale)

    return run


def timed(fn: Callable[[], None], device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--case", choices=sorted(CASES), default="neox")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--baseline-rev", default=None, help="also time the kernel of this commit")
    p.add_argument("--no-ops", action="store_true")
    args = p.parse_args()
    steps = args.steps or DEFAULT_STEPS[args.case]
    case = CASES[args.case](device=args.device)
    C = case.chains
    baseline = kernel_at(args.baseline_rev) if args.baseline_rev else None
    print(
        f"case {case.name}: {case.num_params:,} params, {C} chains, batch {case.batch_size}, "
        f"{steps} steps per timed run, dtype {args.dtype}, device {args.device}, "
        f"{args.rounds} interleaved rounds",
        flush=True,
    )
    runs: dict[str, tuple[Callable[[], None], float]] = {  # name -> (fn, chain-steps)
        "kernel": (kernel_run(case, steps, False, args.dtype), C * steps),
        "kernel+ref": (kernel_run(case, steps, True, args.dtype), C * steps),
        "reference": (reference_run(case, args.dtype), C),
        "sequential": (sequential_run(case, steps), C * steps),
    }
    if baseline is not None:
        runs[f"kernel@{args.baseline_rev}"] = (
            kernel_run(case, steps, False, args.dtype, baseline),
            C * steps,
        )
    if "widths" in case.notes:
        runs["hand-vectorised"] = (hand_vectorised_run(case, steps), C * steps)
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for fn, _ in runs.values():  # warm-up
            fn()
        wall: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn, chain_steps = runs[name]
                w, c = timed(fn, args.device)
                wall[name].append(w / chain_steps * 1e3)
                cpu[name].append(c / chain_steps * 1e3)
        for ms in (wall, cpu):
            # The burn-in run made one draw: take its reference forward out.
            ref = statistics.median(ms["reference"])
            for key in [k for k in ms if k.startswith("kernel") and k != "kernel+ref"]:
                ms[key] = [x - ref / steps for x in ms[key]]
        load = os.getloadavg()[0]
        print(
            f"\nthreads {threads} (load average {load:.1f}): ms per chain-step, median and "
            f"min over {args.rounds} rounds, wall clock | this process's CPU time"
        )
        for name in runs:
            w, c = wall[name], cpu[name]
            print(
                f"  {name:22s} {statistics.median(w):8.2f} {min(w):8.2f} | "
                f"{statistics.median(c):8.2f} {min(c):8.2f}"
            )
        for clock, ms in (("wall", wall), ("cpu", cpu)):
            seq, ker = ms["sequential"], ms["kernel"]
            per_round = [s / k for s, k in zip(seq, ker, strict=True)]
            others = ", ".join(
                f"{k} / kernel {statistics.median(ms[k]) / statistics.median(ker):.2f}x"
                for k in ms
                if k.startswith("kernel@") or k == "hand-vectorised"
            )
            ratio = statistics.median(seq) / statistics.median(ker)
            print(
                f"  {clock}: sequential / kernel {ratio:.2f}x "
                f"(per-round median {statistics.median(per_round):.2f}x; target >= 1)"
                + (f"; {others}" if others else "")
            )
    if args.no_ops:
        return
    print("\nkernel-like ops per chain-step (difference of runs of 2 and 4 steps):")
    short, long = 2, 4
    for name in runs:
        if name == "reference":
            n, _ = kernel_ops(runs[name][0])
            print(f"  {name:22s} {n / C:8.1f}")
            continue
        make = {
            "kernel": lambda s: kernel_run(case, s, False, args.dtype),
            "kernel+ref": lambda s: kernel_run(case, s, True, args.dtype),
            "sequential": lambda s: sequential_run(case, s),
            "hand-vectorised": lambda s: hand_vectorised_run(case, s),
        }.get(name, lambda s: kernel_run(case, s, False, args.dtype, baseline))
        n1, _ = kernel_ops(make(short))
        n2, _ = kernel_ops(make(long))
        print(f"  {name:22s} {(n2 - n1) / (C * (long - short)):8.1f}")


if __name__ == "__main__":
    main()
