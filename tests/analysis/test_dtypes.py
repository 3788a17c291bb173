"""Sampling in float64 and bfloat16 on every built-in task and the generic hf_causal_lm.

bfloat16 computes the loss and its gradient in bfloat16 while the weights and their SGLD
update stay float32 (master weights), so an update far below bfloat16's resolution of a
weight is not lost. Task losses upcast their logits; the sampler keeps losses in float32
(float64 when sampling in float64) whatever dtype the loss comes back in.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from phaseboard.analysis.llc import LLCConfig, estimate_llc
from phaseboard.analysis.tasks import get_task
from tests.analysis.test_tasks import FAST, TINY
from tests.generic_models import CTX, HF_CONFIGS, token_stream

BUILTINS = ["dln", "modular_addition", "tms", "attention_lm", "hf_causal_lm"]


def _trained(name: str) -> tuple[object, nn.Module]:
    """A tiny task's model after 60 training steps (a w* that is not the random init)."""
    if name == "hf_causal_lm":  # a generic task has no training loop of its own
        task = get_task(name, {"hf_config": HF_CONFIGS["gpt_neox"], "seq_len": CTX})
        task.set_token_data({"train": token_stream(600)})
        torch.manual_seed(0)
        model = task.build_model().train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for batch in itertools.islice(task.batches("train", 16, seed=1), 60):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
        return task, model.eval()
    task = get_task(name, {**TINY[name], **FAST, "steps": 60})
    state = None
    for point in task.train(checkpoint_steps=[60]):
        if point.is_checkpoint:
            state = point.state_dict
    model = task.build_model()
    model.load_state_dict(state)
    return task, model


def _estimate(task: object, model: nn.Module, dtype: str, **extra: object):  # type: ignore[no-untyped-def]
    config = LLCConfig(
        lr=1e-4, num_chains=2, num_draws=10, batch_size=16, num_samples=task.num_train,  # type: ignore[attr-defined]
        dtype=dtype, **extra,
    )  # fmt: skip
    return estimate_llc(model, task.loss, task.batches("train", 16, seed=0), config)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", BUILTINS)
def test_float64_sampling_follows_float32s_chains_on_every_builtin_task(name: str) -> None:
    """Same seed, minibatches and noise (drawn in float32 for every dtype): float64 runs
    the float32 chains without their rounding. Tolerance: n_beta x L(w*) x 1e-5, about a
    hundred float32 roundings of the loss, and 1e-3 relative."""
    task, model = _trained(name)
    single, double = _estimate(task, model, "float32"), _estimate(task, model, "float64")
    assert all(math.isfinite(x) for x in double.per_chain)
    assert double.config["dtype"] == "float64"
    tol = double.n_beta * abs(double.init_loss) * 1e-5
    assert double.per_chain == pytest.approx(single.per_chain, rel=1e-3, abs=tol)


@pytest.mark.parametrize("name", BUILTINS)
def test_bfloat16_sampling_runs_and_agrees_with_float32_to_bfloat16s_resolution(name: str) -> None:
    """bfloat16 keeps float32 master weights and the same noise, so its chains follow the
    float32 chains but for bfloat16's rounding of the forward and backward. Each chain's
    estimate n_beta x (mean L(w) - mean L(w*)) agrees to n_beta x L(w*) x 2^-7: two
    bfloat16 roundings of the loss (8 significant bits)."""
    task, model = _trained(name)
    single, half = _estimate(task, model, "float32"), _estimate(task, model, "bfloat16")
    assert all(math.isfinite(x) for x in half.per_chain)
    assert half.loss_trace and all(math.isfinite(x) for t in half.loss_trace for x in t)
    tol = half.n_beta * abs(half.init_loss) * 2**-7
    assert half.per_chain == pytest.approx(single.per_chain, abs=tol)
    assert half.init_loss == pytest.approx(single.init_loss, rel=2**-7)


class _Product(nn.Module):
    """A deep linear network 3-3-3 at the rank-1 point w* = (diag(1, 0, 0), diag(1, 0, 0))
    (``tests/science``): weights of order 1, where bfloat16's resolution (2^-8) is coarser
    than an SGLD step."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.diag(torch.tensor([1.0, 0.0, 0.0])))
        self.b = nn.Parameter(torch.diag(torch.tensor([1.0, 0.0, 0.0])))
        self.register_buffer("target", self.product().detach().clone())

    def product(self) -> torch.Tensor:
        return self.b @ self.a


def test_bfloat16_keeps_the_llc_of_a_deep_linear_network() -> None:
    """Where an SGLD step is below bfloat16's resolution of a weight (noise sqrt(lr) =
    0.0045 against a spacing of 2^-7 = 0.0078 at 1), updating bfloat16 weights lost most
    steps and gave 1.5x the float32 estimate. With float32
    master weights the bfloat16 chains follow float32's (same seed and noise): the
    estimates agree within 5 %, a third of the chains' own spread (~15 %). The population
    loss K(w) = 1/2 |BA - B*A*|^2 (tests/science) needs no data."""

    def loss(m: nn.Module, _batch: object) -> torch.Tensor:
        return 0.5 * ((m.product() - m.target) ** 2).sum()

    def run(dtype: str) -> float:
        cfg = LLCConfig(
            lr=2e-5, n_beta=3000.0, localization=1.0, num_chains=8, num_draws=800,
            num_burnin_steps=200, dtype=dtype, seed=0,
        )  # fmt: skip
        return estimate_llc(_Product(), loss, [torch.zeros(1)], cfg).mean

    single, half = run("float32"), run("bfloat16")
    assert half == pytest.approx(single, rel=0.05), (half, single)


def test_auto_samples_in_bfloat16_where_the_cpu_computes_it_natively() -> None:
    """``dtype="auto"`` (the language-model tasks' server default) resolves when the config
    is made, so results record the dtype they were sampled in: bfloat16 on a CPU whose
    flags (read here from /proc/cpuinfo, independently of the code) include AVX-512 BF16 or
    AMX, else float32."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next(
                (set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")),
                set(),
            )
    except OSError:
        pass
    expected = "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"
    config = LLCConfig(num_samples=100, dtype="auto")
    assert config.dtype == expected and config.to_dict()["dtype"] == expected
    assert LLCConfig(num_samples=100, dtype="auto", device="mps").dtype == "float32"
    with pytest.raises(ValueError, match="'auto'"):
        LLCConfig(num_samples=100, dtype="float16")


def test_the_language_model_tasks_default_to_auto_and_their_jobs_record_the_dtype() -> None:
    from phaseboard.server.jobs.planning import default_llc

    assert default_llc("hf_causal_lm")["dtype"] == "auto"
    assert default_llc("transformer_lens").get("dtype", "float32") == "float32"
    assert default_llc("dln").get("dtype", "float32") == "float32"
    task, model = _trained("hf_causal_lm")
    auto, single = _estimate(task, model, "auto"), _estimate(task, model, "float32")
    assert auto.config["dtype"] == LLCConfig(num_samples=100, dtype="auto").dtype
    # Where that is bfloat16, the chains follow float32's to bfloat16's resolution (above).
    tol = auto.n_beta * abs(auto.init_loss) * 2**-7
    assert auto.per_chain == pytest.approx(single.per_chain, abs=tol)
