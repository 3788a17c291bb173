"""``analysis.llc.warm_up``: what torch.func sets up on its first call in a process (it
imports torch._dynamo, about 800 modules and a second on the 2-core machine) is done by
the warm-up, so a worker's first real estimate pays none of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from phaseboard.analysis.llc import warm_up

ROOT = Path(__file__).resolve().parents[2]
# A fresh interpreter: which modules a first restricted estimate imports, after a warm-up or not.
FIRST_ESTIMATE = """
import json, sys
from phaseboard.analysis.llc import LLCConfig, warm_up
from phaseboard.analysis.restrict import estimate_llc_restricted_many
from phaseboard.analysis.tasks import get_task

task = get_task("modular_addition", {"p": 7, "d_model": 8, "n_heads": 2, "d_mlp": 16})
models = [task.build_model() for _ in range(2)]
if sys.argv[1] == "warm":
    warm_up()
before = set(sys.modules)
config = LLCConfig(num_chains=2, num_draws=2, num_samples=task.num_train)
groups = task.weight_groups(models[0])
estimate_llc_restricted_many(models, task.loss, task.batches("train", 8), config, groups)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _first_estimate_imports(mode: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_ESTIMATE, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_after_a_warm_up_the_first_estimate_imports_nothing() -> None:
    cold = _first_estimate_imports("cold")
    assert any(m.startswith("torch._dynamo") for m in cold), cold[:20]  # what there is to spare
    assert _first_estimate_imports("warm") == []


def test_warm_up_leaves_the_callers_rng_grad_mode_and_threads_alone() -> None:
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    assert warm_up() > 0
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads
