"""Essential dynamics on synthetic output paths with known turns.

Tolerance: a turning point counts as found within 0.1 decades of log10(step).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from phaseboard.analysis.essential_dynamics import (
    SOURCE,
    essential_dynamics,
    pca,
    probe_batch,
    probe_outputs,
    turning_points,
)
from phaseboard.analysis.tasks import get_task

STEPS = np.unique(np.round(np.logspace(1, 5, 50)).astype(int))
X = np.log10(STEPS)


def l_shaped_path(rng: np.random.Generator, dim: int = 200) -> np.ndarray:
    """Outputs that move along one direction until step 1e3, then along another."""
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    first = np.clip(X - 1, 0, 2)[:, None] * a  # moves while log-step in [1, 3]
    second = np.clip(X - 3, 0, 2)[:, None] * b  # moves while log-step in [3, 5]
    return first + second + rng.normal(0, 0.01, (len(X), dim))


def test_pca_recovers_the_plane_of_a_planar_path_with_its_variance() -> None:
    out = l_shaped_path(np.random.default_rng(0))
    scores, ratio = pca(out, k=3)
    assert scores.shape == (len(X), 3)
    assert ratio[:2].sum() > 0.99 and ratio[2] < 0.01  # the path lies in a plane
    assert np.all(np.diff(ratio) <= 0) and scores[-1, 0] >= scores[0, 0]


def test_pca_of_a_rank_one_path_has_zero_further_components() -> None:
    out = np.outer(np.arange(10.0), np.ones(5))
    scores, ratio = pca(out, k=3)
    assert ratio[0] == 1.0 and np.allclose(ratio[1:], 0) and np.allclose(scores[:, 1:], 0)


def test_corner_of_an_l_shaped_path_is_a_turning_point() -> None:
    ed = essential_dynamics(list(STEPS), l_shaped_path(np.random.default_rng(1)))
    assert len(ed.turning_points) == 1, ed.turning_points
    b = ed.turning_points[0]
    assert abs(math.log10(b.step) - 3) <= 0.1
    assert b.source == SOURCE and b.kind == "turning_point" and b.score >= 0.1


def test_straight_path_has_no_turning_point() -> None:
    rng = np.random.default_rng(2)
    out = X[:, None] * rng.normal(size=50) + rng.normal(0, 0.01, (len(X), 50))
    assert essential_dynamics(list(STEPS), out).turning_points == []


def test_small_wiggles_below_a_tenth_of_the_spread_are_not_turns() -> None:
    path = np.column_stack([X, 0.02 * np.sin(8 * X), np.zeros_like(X)])
    assert turning_points(STEPS, path) == []


def test_outputs_of_a_task_model_on_its_probe_set_are_flat_and_deterministic() -> None:
    task = get_task("modular_addition", {"p": 7})
    torch.manual_seed(0)
    model = task.build_model()
    probe = probe_batch(task, max_examples=10)
    out = probe_outputs(task, model, probe)
    assert out.shape == (10 * 7,) and out.dtype == np.float32
    assert np.allclose(np.exp(out.reshape(10, 7)).sum(1), 1, atol=1e-5)  # log-probabilities
    assert np.array_equal(out, probe_outputs(task, model, probe_batch(task, max_examples=10)))


def test_probe_hash_names_the_examples_not_the_config() -> None:
    import torch

    from phaseboard.analysis.essential_dynamics import probe_batch, probe_hash, probe_split
    from phaseboard.analysis.tasks import get_task

    base = get_task("tms", {})
    other_lr = get_task("tms", {"lr": 0.01})  # a training-only key: the same examples
    other_data = get_task("tms", {"seed": 1})  # the data seed: other examples
    h = probe_hash(probe_batch(base, 64))
    assert len(h) == 16 and probe_split(base) == "test"
    assert probe_hash(probe_batch(other_lr, 64)) == h
    assert probe_hash(probe_batch(other_data, 64)) != h
    assert probe_hash(probe_batch(base, 32)) != h
    x = torch.arange(6.0).reshape(2, 3)
    assert probe_hash({"b": x, "a": x}) == probe_hash({"a": x, "b": x})
    assert probe_hash((x,)) != probe_hash((x.reshape(3, 2),))  # the shape counts


@pytest.mark.parametrize(("name", "config"), [("modular_addition", {"p": 7}), ("tms", {})])
def test_seeds_of_one_config_share_the_lens_probe(name: str, config: dict) -> None:
    """Runs that differ only in their data seed are probed on the same inputs (so the compare
    page can put them in one PC space); the probe still follows the task's shape."""
    from phaseboard.analysis.essential_dynamics import lens_probe, probe_batch, probe_hash
    from phaseboard.analysis.tasks import get_task

    a, b = get_task(name, {**config, "seed": 0}), get_task(name, {**config, "seed": 1})
    (pa, split), (pb, _) = lens_probe(a, 32), lens_probe(b, 32)
    assert split == "shared" and probe_hash(pa) == probe_hash(pb)
    assert probe_hash(probe_batch(a, 32)) != probe_hash(probe_batch(b, 32))  # test splits differ
    assert len(pa[0]) == 32
    if name == "modular_addition":  # inputs and labels of real pairs, all distinct
        tokens, labels = pa
        assert torch.equal(labels, (tokens[:, 0] + tokens[:, 1]) % 7)
        assert len({tuple(t.tolist()) for t in tokens}) == 32
        other = get_task(name, {"p": 11, "seed": 0})
        assert probe_hash(lens_probe(other, 32)[0]) != probe_hash(pa)
