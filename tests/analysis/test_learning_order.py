"""Learned-at steps and rank agreement on loss matrices with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from phaseboard.analysis.learning_order import (
    learned_at,
    order_by_learned_at,
    per_example_losses,
    rank_agreement,
    thresholds,
)
from phaseboard.analysis.tasks import get_task

STEPS = [0, 10, 100, 1000, 10000]


def test_learned_at_is_where_the_loss_last_crosses_below_the_threshold() -> None:
    losses = np.array(
        [
            # ex0: crosses between 10 and 100; ex1: dips at 10, forgotten, learned between
            # 100 and 1000; ex2: never; ex3: below from the start
            [4.0, 4.0, 4.0, 0.1],
            [3.0, 0.1, 4.0, 0.1],
            [0.3, 3.0, 4.0, 0.1],
            [0.01, 0.03, 4.0, 0.1],
            [0.01, 0.01, 0.5, 0.1],
        ]
    )
    out, threshold = learned_at(STEPS, losses, threshold=0.3)
    assert threshold == 0.3
    # ex0: log loss log 3 -> log 0.3 between log-steps 1 and 2: the threshold at the end
    assert out[0] == pytest.approx(100.0)
    # ex1: log 3 -> log 0.03, the threshold half-way: 10 ** 2.5
    assert out[1] == pytest.approx(10**2.5)
    assert math.isnan(out[2]) and out[3] == 0


def test_default_threshold_is_per_example_relative_to_its_own_final_loss() -> None:
    """Threshold = last loss + 0.1 x (first - last): the step by which 90 % of the
    example's drop is done. Example 2 barely moves (under 10 % of its first loss)."""
    losses = np.array([[4.0, 2.0, 6.0], [1.0, 0.2, 5.8], [0.4, 0.1, 5.7]])
    thr = thresholds(losses)
    assert thr[:2] == pytest.approx([0.4 + 0.36, 0.1 + 0.19]) and np.isnan(thr[2])
    out, median = learned_at([1, 10, 100], losses)
    assert median == pytest.approx(np.median(thr[:2]))
    assert 10 < out[0] < 100 and 1 < out[1] < 10 and math.isnan(out[2])


def _grokking_like(rng: np.random.Generator) -> tuple[list[int], np.ndarray, np.ndarray]:
    """500 examples from ln(31) to ~0: memorised ones early, the rest at a grokking step."""
    steps = [0, *np.unique(np.logspace(0, 4, 30).astype(int)).tolist()]
    x = np.log10(np.maximum(steps, 1))
    true = np.where(rng.random(500) < 0.5, rng.uniform(1.5, 2.0, 500), rng.uniform(3.0, 3.3, 500))
    # sigmoid drop in log-step from ln 31 to 1e-3
    frac = 1 / (1 + np.exp(-(x[:, None] - true[None, :]) * 12))
    losses = np.log(31) * (1 - frac) + 1e-3
    return steps, losses, 10**true


def _language_model_like(rng: np.random.Generator) -> tuple[list[int], np.ndarray, np.ndarray]:
    """512 sequences from ln(500) = 6.2 down to 3-4.5 nats (never near a tenth of 6.2),
    each dropping around its own step, with checkpoint-to-checkpoint noise."""
    steps = [0, *np.unique(np.logspace(0, 4, 26).astype(int)).tolist()]
    x = np.log10(np.maximum(steps, 1))
    true = rng.uniform(1.0, 3.5, 512)
    final = rng.uniform(3.0, 4.5, 512)
    frac = 1 / (1 + np.exp(-(x[:, None] - true[None, :]) * 6))
    losses = np.log(500) - (np.log(500) - final) * frac + rng.normal(0, 0.02, (len(steps), 512))
    return steps, losses, 10**true


@pytest.mark.parametrize("make", [_grokking_like, _language_model_like])
def test_relative_threshold_orders_examples_by_when_they_drop(make) -> None:  # type: ignore[no-untyped-def]
    """Tolerance: every example is learned, and the learned-at ranks agree with the
    drop steps the matrix was built from (Spearman > 0.9; checkpoints are ~0.15 decades
    apart and a 90 %-done step sits a fixed distance after each midpoint)."""
    steps, losses, dropped_at = make(np.random.default_rng(0))
    learned, _ = learned_at(steps, losses)
    assert np.isfinite(learned).all()
    assert rank_agreement(learned, dropped_at).rho > 0.9
    assert np.all(learned >= dropped_at / 2)  # never well before its drop


def test_an_absolute_threshold_learns_nothing_on_a_language_model_but_the_default_does() -> None:
    """The old rule (0.1 x the first checkpoint's median, ~0.62 nats here) is below every
    final loss of a language model: zero examples learned, by construction."""
    steps, losses, _ = _language_model_like(np.random.default_rng(1))
    old, _ = learned_at(steps, losses, threshold=0.1 * float(np.median(losses[0])))
    new, _ = learned_at(steps, losses)
    assert np.isfinite(old).sum() == 0 and np.isfinite(new).sum() == losses.shape[1]


def test_an_example_that_is_forgotten_by_the_end_is_not_learned() -> None:
    losses = np.array([[3.0, 3.0], [0.1, 0.1], [2.9, 0.1]])  # ex0 learned, then forgotten
    out, _ = learned_at([1, 10, 100], losses)
    assert math.isnan(out[0]) and 1 < out[1] <= 10


def test_rows_are_taken_in_step_order_whatever_order_they_come_in() -> None:
    losses = np.array([[0.0], [5.0], [0.0]])  # steps 30, 10, 20
    out, _ = learned_at([30, 10, 20], losses, threshold=1.0)
    assert 10 < out[0] <= 20


def test_rank_agreement_of_same_order_is_one_and_of_a_shuffle_near_zero() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 4, 500)
    same = rank_agreement(a, a * 2 + 1)
    assert same.rho == pytest.approx(1.0) and same.n == 500
    shuffled = rank_agreement(a, rng.permutation(a))
    assert abs(shuffled.rho) < 0.15  # tolerance: 3 standard errors for n = 500


def test_rank_agreement_counts_only_examples_both_runs_learn() -> None:
    a = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    b = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    agree = rank_agreement(a, b)
    assert agree.n == 3 and agree.rho == pytest.approx(1.0)
    assert math.isnan(rank_agreement(a[:2], b[:2]).rho)  # too few to rank


def test_order_puts_never_learned_examples_last() -> None:
    assert order_by_learned_at(np.array([30.0, np.nan, 10.0, 20.0])).tolist() == [2, 3, 0, 1]


@pytest.mark.parametrize("name", ["modular_addition", "attention_lm", "tms", "dln"])
def test_per_example_losses_average_to_the_task_loss(name: str) -> None:
    task = get_task(name)
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.datasets()["train"][:16]
    out = per_example_losses(task, model, batch)
    assert out.shape == (16,) and out.dtype == np.float32
    with torch.no_grad():
        whole = float(task.loss(model, batch))
    if name == "attention_lm":  # mean over sequences of per-sequence means: same targets each
        assert out.mean() == pytest.approx(whole, rel=1e-2)
    else:
        assert out.mean() == pytest.approx(whole, rel=1e-4)
