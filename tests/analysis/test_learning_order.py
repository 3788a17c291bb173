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


def test_default_threshold_is_a_tenth_of_the_median_first_loss() -> None:
    losses = np.array([[4.0, 2.0, 6.0], [0.1, 0.3, 0.5]])
    out, threshold = learned_at([1, 10], losses)
    assert threshold == pytest.approx(0.4)
    assert 1 < out[0] < out[1] <= 10 and math.isnan(out[2])


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
