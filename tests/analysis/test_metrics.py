"""Per-checkpoint metrics: exact norms and distances, Hutchinson against a known Hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from phaseboard.analysis.metrics import checkpoint_metrics, distance, hessian_trace, weight_norms
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
    trace, se = hessian_trace(model, lambda m, _: m(), None, samples=200, seed=seed)
    exact = float(torch.trace(a))
    assert se > 0
    assert abs(trace - exact) <= 4 * se, (trace, exact, se)


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    # Rademacher v: v^T D v = tr(D) for every v, so the SE is zero.
    a = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    trace, se = hessian_trace(Quadratic(a), lambda m, _: m(), None, samples=8)
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
