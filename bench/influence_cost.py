"""What the influence lenses cost: against the LLC run they ride on, and against devinterp.

Trains the demo's modular-addition run (``phaseboard demo``'s config, ``--checkpoints``
log-spaced checkpoints, 20 by default) and samples its checkpoints with the demo's LLC
settings (4 chains x 100 draws after 20 burn-in steps, lr 1e-3, localization 100, batch 64;
the LLC's step-size and localization bias checks off, so the LLC run samples the same rows as
the lenses).

A. Overhead of the observables, in the same process and on the same rows, interleaved
   ``--reps`` times (medians printed):
   - ``bayesian_influence_many`` (32 test + 128 training examples' losses at every 3rd draw
     of every chain, the lens's default) against ``estimate_llc_many`` on the same
     checkpoints;
   - ``susceptibilities_many`` (the task's 9 weight groups and the full model; a 64-example
     reference set and 32 examples of each of 4 observable sets at every 5th draw, the
     lens's default) against ``estimate_llc_restricted_many`` of the same groups plus the
     full model.
   ``--influence-every 1 --susceptibilities-every 1`` observes every draw.
   Target: each ratio at most 1.30. Ratios are of process CPU time (the machine may be
   shared: with ``--threads 1`` CPU time is the work done, wall-clock time is also printed).
B. The 20-checkpoint trajectory through the batched path (both lenses, as their jobs run
   them) against devinterp 2.0.1's ``bif`` and ``susceptibilities`` called once per checkpoint
   (devinterp computes one checkpoint at a time, chain after chain), with the same settings
   and the same numbers of observed examples. devinterp runs on ``--devinterp-checkpoints``
   of them and is scaled to the trajectory (its calls are independent). Skipped, with a line
   saying so, where devinterp is not installed (a bench-only dependency:
   ``.venv/bin/pip install 'torch==2.13.0' devinterp==2.0.1``).

    .venv/bin/python bench/influence_cost.py                 # A and B, 20 checkpoints
    .venv/bin/python bench/influence_cost.py --skip-devinterp --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phaseboard.analysis.influence import (  # noqa: E402
    bayesian_influence_many,
    susceptibilities_many,
)
from phaseboard.analysis.llc import LLCConfig, estimate_llc_many  # noqa: E402
from phaseboard.analysis.restrict import estimate_llc_restricted_many  # noqa: E402
from phaseboard.analysis.tasks import get_task, log_spaced_steps  # noqa: E402
from phaseboard.server.commands.demo import FULL_CONFIG, FULL_LLC  # noqa: E402
from phaseboard.server.jobs.planning import DEFAULT_LLC  # noqa: E402
from phaseboard.server.lenses.influence import DEFAULTS as INFLUENCE  # noqa: E402
from phaseboard.server.lenses.susceptibilities import DEFAULTS as SUSCEPTIBILITIES  # noqa: E402


def train(checkpoints: int, cache: Path | None) -> tuple[Any, list[dict[str, torch.Tensor]], float]:
    """The demo's run trained with ``checkpoints`` log-spaced checkpoints (or read from
    ``cache``, a file this function wrote before for the same count)."""
    config = {**FULL_CONFIG, "num_checkpoints": checkpoints}
    task = get_task("modular_addition", config)
    t0 = time.perf_counter()
    if cache is not None and cache.exists():
        states = torch.load(cache, weights_only=True)
        if len(states) == checkpoints:
            return task, states, 0.0
    steps = log_spaced_steps(config["steps"], checkpoints)
    states = [p.state_dict for p in task.train(checkpoint_steps=steps) if p.is_checkpoint]
    if cache is not None:
        torch.save(states, cache)
    return task, states, time.perf_counter() - t0


def timed(fn: Any) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def part_a(
    task: Any, states: list[Any], config: LLCConfig, reps: int, every: dict[str, int]
) -> dict[str, float]:
    model = task.build_model()
    data = task.datasets()
    test, train_ex = data["test"][:32], data["train"][:128]
    examples = tuple(torch.cat([a, b]) for a, b in zip(test, train_ex, strict=True))
    groups = task.weight_groups(model)
    observables = {n: data[n][:32] for n in [*task.data_subsets(), "test"]}

    def batches() -> Any:
        return task.batches("train", config.batch_size, seed=config.seed)

    runs = {
        "llc": lambda: estimate_llc_many(states, task.loss, batches(), config, model=model),
        "influence": lambda: bayesian_influence_many(
            states,
            task.loss,
            batches(),
            examples,
            config,
            per_example_loss=task.per_example_loss,
            model=model,
            observe_every=every["influence"],
        ),
        "llc_restricted": lambda: estimate_llc_restricted_many(
            states, task.loss, batches(), config, {"full": None, **groups}, model=model
        ),
        "susceptibilities": lambda: susceptibilities_many(
            states,
            task.loss,
            batches(),
            config,
            weight_groups=groups,
            observables=observables,
            reference=data["train"][:64],
            per_example_loss=task.per_example_loss,
            model=model,
            observe_every=every["susceptibilities"],
        ),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    # warm-up: torch.func's first call imports and sets up ~1 s of Python
    warm = LLCConfig(**{**config.to_dict(), "num_draws": 2, "num_burnin_steps": 0})
    estimate_llc_many(states[:2], task.loss, batches(), warm, model=model)
    for r in range(reps):
        for name, fn in runs.items():
            times[name].append(timed(fn))
            wall, cpu = times[name][-1]
            line = f"  rep {r + 1}/{reps} {name:17s} {wall:7.2f} s wall {cpu:7.2f} s CPU"
            print(line, flush=True)

    def ratio(a: str, b: str, which: int) -> float:
        return statistics.median(
            [x[which] / y[which] for x, y in zip(times[a], times[b], strict=True)]
        )

    med = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    out = {}
    for lens, base, what in (
        ("influence", "llc", "LLC"),
        ("susceptibilities", "llc_restricted", f"restricted LLC of {len(groups) + 1} groups"),
    ):
        out[lens] = ratio(lens, base, 1)
        print(
            f"A. {lens:16s} {med[lens]:7.2f} s CPU vs {what} {med[base]:7.2f} s CPU: "
            f"ratio {out[lens]:.2f} (wall-clock {ratio(lens, base, 0):.2f}; target <= 1.30)"
        )
    return out


# ---------------------------------------------------------------- B: devinterp per checkpoint


def devinterp_inputs(task: Any) -> tuple[Any, Any]:
    """Modular addition in devinterp's shape: input_ids [a, b, =, a + b mod p] and a loss_fn
    returning (batch, 3) "per-token" losses, the example's cross-entropy at each of the three
    positions (so their mean, which devinterp samples and correlates, is the example's loss)."""
    from datasets import Dataset

    def as_dataset(batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        ids = torch.cat([batch[0], batch[1][:, None]], dim=1)
        return Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")

    def loss_fn(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy(
            model(ids[:, :3]).float(), ids[:, 3], reduction="none"
        )
        return ce[:, None].expand(-1, 3)

    return as_dataset, loss_fn


def part_b(
    task: Any,
    states: list[Any],
    config: LLCConfig,
    n_devinterp: int,
    skip: bool,
    every: dict[str, int],
) -> dict[str, float] | None:
    model = task.build_model()
    data = task.datasets()
    groups = task.weight_groups(model)
    sets = [*task.data_subsets(), "test"]
    B = config.batch_size
    # The same observed examples for both: devinterp observes batch_size x batches_per_draw.
    test, train_ex = data["test"][:B], data["train"][: 2 * B]
    examples = tuple(torch.cat([a, b]) for a, b in zip(test, train_ex, strict=True))

    def ours() -> None:
        bayesian_influence_many(
            states, task.loss, task.batches("train", B, seed=0), examples, config,
            per_example_loss=task.per_example_loss, model=model,
            observe_every=every["influence"],
        )  # fmt: skip
        susceptibilities_many(
            states, task.loss, task.batches("train", B, seed=0), config, weight_groups=groups,
            observables={n: data[n][:B] for n in sets}, reference=data["train"][:B],
            per_example_loss=task.per_example_loss, model=model,
            observe_every=every["susceptibilities"],
        )  # fmt: skip

    ours_s, ours_cpu = timed(ours)
    print(
        f"B. batched path, {len(states)} checkpoints, both lenses: {ours_s:7.2f} s wall "
        f"{ours_cpu:7.2f} s CPU",
        flush=True,
    )
    if skip:
        return {"ours_s": ours_s}
    try:
        from devinterp.slt.bif import bif
        from devinterp.slt.susceptibilities import susceptibilities as di_susceptibilities
    except ImportError as exc:
        print(f"B. devinterp not installed ({exc}): no comparison (pip install devinterp==2.0.1)")
        return {"ours_s": ours_s}
    as_dataset, loss_fn = devinterp_inputs(task)
    common = dict(
        lr=config.lr, n_beta=config.effective_n_beta, localization=config.localization,
        num_chains=config.num_chains, num_draws=config.num_draws,
        num_burnin_steps=config.num_burnin_steps, batch_size=B, loss_fn=loss_fn, device="cpu",
    )  # fmt: skip
    train_ds = as_dataset(data["train"][:])
    masks = {"full": None, **groups}

    def one(state: dict[str, torch.Tensor], tmp: Path) -> None:
        m = task.build_model()
        m.load_state_dict(state)
        bif(
            m, train_ds,
            {"test": (as_dataset(test), 1), "train": (as_dataset(train_ex), 2)},
            correlation_method="sequence", output_path=tmp / "bif.zarr", **common,
        )  # fmt: skip
        di_susceptibilities(
            m, train_ds,
            {"reference": (as_dataset(data["train"][:B]), 1),
             **{n: (as_dataset(data[n][:B]), 1) for n in sets}},
            masks, sampling_task="reference", output_path=tmp / "sus.zarr", **common,
        )  # fmt: skip

    picked = states[:: max(1, len(states) // n_devinterp)][:n_devinterp]
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp_dir:
        warnings.simplefilter("ignore")
        one(states[0], Path(tmp_dir) / "warm")  # warm-up, as ours gets one
        t0, c0 = time.perf_counter(), time.process_time()
        for i, state in enumerate(picked):
            one(state, Path(tmp_dir) / str(i))
        per_ckpt = (time.perf_counter() - t0) / len(picked)
        per_ckpt_cpu = (time.process_time() - c0) / len(picked)
    di_s, di_cpu = per_ckpt * len(states), per_ckpt_cpu * len(states)
    print(
        f"B. devinterp 2.0.1, one checkpoint at a time: {per_ckpt_cpu:7.2f} s CPU per "
        f"checkpoint (timed on {len(picked)}), {di_cpu:7.2f} s CPU for {len(states)}: ratio "
        f"{di_cpu / ours_cpu:.2f}x CPU time (wall-clock {di_s / ours_s:.2f}x), devinterp / batched"
    )
    return {"ours_cpu": ours_cpu, "devinterp_cpu": di_cpu, "ratio": di_cpu / ours_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--draws", type=int, default=FULL_LLC["num_draws"])
    ap.add_argument("--devinterp-checkpoints", type=int, default=2)
    for lens, defaults in (("influence", INFLUENCE), ("susceptibilities", SUSCEPTIBILITIES)):
        ap.add_argument(
            f"--{lens}-every", type=int, default=defaults["observe_every"],
            help=f"observe every k-th draw (default: the {lens} lens's)",
        )  # fmt: skip
    ap.add_argument("--skip-devinterp", action="store_true")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--cache", type=Path, default=None, help="keep the trained checkpoints here")
    args = ap.parse_args()
    load = os.getloadavg()  # a shared machine: read the ratios, not the seconds
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (1, 5, 15 min)", flush=True)
    every = {"influence": args.influence_every, "susceptibilities": args.susceptibilities_every}
    if args.threads:
        torch.set_num_threads(args.threads)
    task, states, train_s = train(args.checkpoints, args.cache)
    print(f"trained the demo's run: {len(states)} checkpoints in {train_s:.1f} s", flush=True)
    # bias_checks off: the LLC run of the same rows the lenses sample (the LLC job's default
    # also samples every checkpoint at lr / 2 and localization / 2, three times the rows).
    config = LLCConfig(
        **{**DEFAULT_LLC, **FULL_LLC, "num_draws": args.draws, "num_samples": task.num_train},
        bias_checks=False,
    )
    print(
        f"LLC settings: {config.num_chains} chains x {config.num_draws} draws, "
        f"{config.num_burnin_steps} burn-in, lr {config.lr}, localization {config.localization}, "
        f"batch {config.batch_size}, n_beta {config.effective_n_beta:.1f}; examples observed "
        f"every {every['influence']} (influence) and {every['susceptibilities']} "
        f"(susceptibilities) draws; torch threads {torch.get_num_threads()}"
    )
    if not args.skip_a:
        part_a(task, states, config, args.reps, every)
    part_b(task, states, config, args.devinterp_checkpoints, args.skip_devinterp, every)
    print("load average at the end {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
