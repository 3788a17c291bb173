"""Benchmark: weight-restricted LLCs with per-pass rows against every row holding every group.

``estimate_llc_restricted_many`` runs groups that free the same tensors as one vmap pass;
a row carries copies of only its pass's tensors and the frozen rest is one copy per
checkpoint (``analysis.llc._run_sgld``). The baseline, measured in the same run with the
same code, is the layout before that change: every group's mask widened with all-False
entries to the union of all groups' tensors, so every group frees the same tensors and all
rows share one pass holding (and differentiating) every tensor any group frees. Both give
the same numbers (checked); the script prints the time of each (best of ``--repeats``), the
peak memory of each (a fresh subprocess per layout), and the ratios.

    .venv/bin/python bench/restricted_layout.py --case demo --checkpoints 8
    .venv/bin/python bench/restricted_layout.py --case neox --size 3m --checkpoints 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.llc_vs_devinterp import NEOX_SIZES, make_data  # noqa: E402
from phaseboard.analysis.llc import LLCConfig  # noqa: E402
from phaseboard.analysis.restrict import ParamMask, estimate_llc_restricted_many  # noqa: E402
from phaseboard.analysis.tasks import get_task  # noqa: E402


def joint(masks: dict[str, ParamMask], model: torch.nn.Module) -> dict[str, ParamMask]:
    """Every group widened to the union of all groups' tensors (all-False where it had none):
    one pass whose rows hold everything, as before per-pass rows."""
    params = dict(model.named_parameters())
    union = [n for n in params if any(n in m for m in masks.values())]
    return {
        g: {n: m[n] if n in m else torch.zeros_like(params[n], dtype=torch.bool) for n in union}
        for g, m in masks.items()
    }


def setup(args: argparse.Namespace) -> tuple[Any, list[torch.nn.Module], LLCConfig, int]:
    """(task, checkpoints, LLC config, batch size): random-weight checkpoints of the case."""
    if args.case == "demo":
        from phaseboard.server.commands.demo import FULL_CONFIG, FULL_LLC

        task = get_task("modular_addition", dict(FULL_CONFIG))
        llc, batch = dict(FULL_LLC), 64  # the demo's LLC settings, the jobs' batch size
    else:
        hf = {"model_type": "gpt_neox", "max_position_embeddings": 16, "bos_token_id": 0,
              "eos_token_id": 0, **NEOX_SIZES[args.size]}  # fmt: skip
        task = get_task("hf_causal_lm", {"hf_config": hf, "seq_len": 16, "num_sequences": 512})
        vocab = hf["vocab_size"]
        task.set_token_data({"train": make_data(512, vocab, 16), "test": make_data(64, vocab, 16)})
        llc, batch = {"num_chains": 4, "num_draws": 100}, 16
    llc = {**llc, "num_draws": args.draws or llc["num_draws"], "num_burnin_steps": 0}
    models = []
    for seed in range(args.checkpoints):
        torch.manual_seed(seed)
        models.append(task.build_model().eval())
    config = LLCConfig(**llc, batch_size=batch, num_samples=task.num_train)
    return task, models, config, batch


def run(args: argparse.Namespace, layout: str) -> dict[str, Any]:
    task, models, config, batch = setup(args)
    masks = task.weight_groups(models[0])
    if layout == "joint":
        masks = joint(masks, models[0])

    def once() -> list[dict[str, Any]]:
        batches = task.batches("train", batch, seed=config.seed)
        return estimate_llc_restricted_many(models, task.loss, batches, config, masks)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = once()  # warm-up, and the peak memory of one run
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t)
    means = [[r.mean for r in ckpt.values()] for ckpt in out]
    return {"seconds": best, "peak_mb": peak / 1024, "base_mb": before / 1024, "means": means,
            "groups": len(masks)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=["demo", "neox"], default="demo")
    p.add_argument("--size", choices=sorted(NEOX_SIZES), default="200k", help="case neox")
    p.add_argument("--checkpoints", type=int, default=8)
    p.add_argument("--draws", type=int, default=20, help="SGLD draws per chain (0: default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layout", choices=["passes", "joint"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.layout:  # one layout in this (fresh) process: its peak memory is its own
        print(json.dumps(run(args, args.layout)))
        return
    results = {}
    for layout in ("joint", "passes"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--layout", layout]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        results[layout] = json.loads(done.stdout.strip().splitlines()[-1])
    j, s = results["joint"], results["passes"]
    diff = max(
        abs(a - b) / max(abs(a), 1e-6)
        for ca, cb in zip(j["means"], s["means"], strict=True)
        for a, b in zip(ca, cb, strict=True)
    )
    label = args.case if args.case == "demo" else f"neox {args.size}"
    print(f"case {label}: {args.checkpoints} checkpoints x {s['groups']} weight groups, "
          f"{args.draws} draws, {args.threads} thread(s); largest relative LLC difference "
          f"between layouts {diff:.1e}")  # fmt: skip
    for name, r in results.items():
        print(f"  {name:6s} {r['seconds']:7.2f} s   peak {r['peak_mb']:7.0f} MB "
              f"(before sampling {r['base_mb']:.0f} MB)")  # fmt: skip
    print(
        f"  joint / passes: time {j['seconds'] / s['seconds']:.2f}x, peak memory above the "
        f"baseline {(j['peak_mb'] - j['base_mb']) / max(s['peak_mb'] - s['base_mb'], 1):.1f}x"
    )


if __name__ == "__main__":
    main()
