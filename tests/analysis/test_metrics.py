"""Per-checkpoint metrics: exact norms and distances, Hutchinson against a known Hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from phaseboard.analysis.metrics import (
    checkpoint_metrics,
    distance,
    hessian_trace,
    probe,
    weight_norms,
)
from phaseboard.analysis.tasks import get_task


class Quadratic(nn.Module):
    """L(w) = 0.5 w^T A w + b^T w: its Hessian is A everywhere."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(torch.randn(a.shape[0], dtype=a.dtype))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w + self.w.sum()


def random_spd(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return m @ m.T + torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(3))
def test_hutchinson_matches_exact_trace_within_its_standard_error(seed: int) -> None:
    a = random_spd(20, seed)
    model = Quadratic(a)
    trace, se, n = hessian_trace(model, lambda m, _: m(), None, samples=200, seed=seed)
    exact = float(torch.trace(a))
    assert se > 0 and n == 200
    assert abs(trace - exact) <= 4 * se, (trace, exact, se)


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    # Rademacher v: v^T D v = tr(D) for every v, so the SE is zero.
    a = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    trace, se, _ = hessian_trace(Quadratic(a), lambda m, _: m(), None, samples=8)
    assert trace == pytest.approx(15.0) and se == pytest.approx(0.0, abs=1e-12)


def test_weight_norms_and_distance_are_exact() -> None:
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # 6 ones -> norm sqrt(6)
        model[1].weight.fill_(2.0)  # 3 twos + bias
        model[1].bias.fill_(4.0)  # -> norm sqrt(12 + 16)
    norms = weight_norms(model)
    assert norms["weight_norm/0"] == pytest.approx(math.sqrt(6))
    assert norms["weight_norm/1"] == pytest.approx(math.sqrt(28))
    assert norms["weight_norm"] == pytest.approx(math.sqrt(34))
    ref = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    assert distance(model, ref) == pytest.approx(math.sqrt(34))
    ref["1.bias"] = torch.full((1,), 1.0)
    assert distance(model, ref) == pytest.approx(math.sqrt(34 - 16 + 9))


def test_checkpoint_metrics_on_a_task() -> None:
    task = get_task("modular_addition", {"p": 7, "d_model": 8, "n_heads": 2, "d_mlp": 16})
    torch.manual_seed(0)
    init = task.build_model()
    model = task.build_model()
    out = checkpoint_metrics(
        task, model, reference_state=init.state_dict(), hutchinson_samples=4, seed=0
    )
    expected = {"train_loss", "test_loss", "train_acc", "test_acc", "weight_norm", "grad_norm"}
    assert expected | {"distance_from_init", "hessian_trace", "hessian_trace_se"} <= set(out)
    assert "weight_norm/embed" in out and "weight_norm/attn" in out
    assert out["distance_from_init"] == pytest.approx(distance(model, init.state_dict()))
    assert all(math.isfinite(v) for v in out.values())
    # the same seed gives the same Hutchinson estimate
    again = checkpoint_metrics(task, model, hutchinson_samples=4, seed=0)
    assert again["hessian_trace"] == out["hessian_trace"]
    assert "distance_from_init" not in again


def test_hutchinson_stops_at_its_time_budget_and_reports_each_sample() -> None:
    a = random_spd(10, 0)
    calls: list[tuple[int, int, str]] = []
    trace, se, n = hessian_trace(
        Quadratic(a), lambda m, _: m(), None, samples=50, budget_s=0.0,
        progress=lambda d, t, m: calls.append((d, t, m)),
    )  # fmt: skip
    assert n == 1 and math.isnan(se) and math.isfinite(trace)  # one sample always runs
    assert calls == [(1, 50, "Hessian trace sample 1/50")]


def test_metrics_are_computed_on_a_bounded_probe_of_each_split() -> None:
    task = get_task("dln")  # 1024 training examples
    torch.manual_seed(0)
    model = task.build_model()
    out = checkpoint_metrics(task, model, max_examples=100, hutchinson_samples=0)
    x, y = task.full_batch("train")
    with torch.no_grad():
        expected = float(task.loss(model, (x[:100], y[:100])))
    assert out["train_loss"] == pytest.approx(expected, rel=1e-6)
    assert out["probe_examples"] == 100 and "hessian_trace" not in out
    # max_tokens bounds the input elements: 8 inputs per example -> 16 examples
    out = checkpoint_metrics(task, model, max_tokens=128, hutchinson_samples=0)
    assert out["probe_examples"] == 16
    assert probe((x, y), None, None)[0].shape == x.shape  # no bound: everything


def test_token_tasks_skip_the_hessian_by_default_and_bound_their_tokens() -> None:
    from tests.generic_models import CTX, HF_CONFIGS, token_stream

    task = get_task("hf_causal_lm", {"hf_config": HF_CONFIGS["gpt2"], "seq_len": CTX})
    task.set_token_data({"train": token_stream(4000)})
    torch.manual_seed(0)
    model = task.build_model()
    calls: list[tuple[int, int, str]] = []
    out = checkpoint_metrics(
        task, model, max_tokens=10 * CTX, progress=lambda d, t, m: calls.append((d, t, m))
    )
    assert "hessian_trace" not in out and out["probe_examples"] == 10
    assert calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)
    on = checkpoint_metrics(task, model, max_tokens=10 * CTX, hessian=True, hutchinson_samples=2)
    assert on["hessian_trace_samples"] == 2 and math.isfinite(on["hessian_trace"])
    assert on["train_loss"] == out["train_loss"]
