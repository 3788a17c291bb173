"""Learning order: which examples a model learns when, and whether two runs agree.

Per example of a probe set, the loss at every checkpoint (a checkpoints x examples
matrix, stored compactly as float16 by the server). An example is **learned at** the
first checkpoint step from which its loss stays at or below a threshold at every later
checkpoint (an example that is learned, forgotten and learned again counts from the last
time). The threshold is ``relative_threshold`` times the median loss at the first
checkpoint unless given absolutely: for cross-entropy from a uniform start (log p) the
default 0.1 means "the right answer has most of the probability".

Agreement between two runs on the same examples is the Spearman rank correlation of
their learned-at steps over the examples both runs learn ("Let's Agree to Agree";
"SGD learns functions of increasing complexity").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from analysis.tasks.base import Batch, Task, to_device


@torch.no_grad()
def per_example_losses(
    task: Task, model: nn.Module, batch: Batch, device: str = "cpu"
) -> np.ndarray:
    """Loss of each example of ``batch`` (n,), float32, via the task's hook."""
    model = model.to(device).eval()
    return task.per_example_loss(model, to_device(batch, device)).float().cpu().numpy()


def learned_at(
    steps: Sequence[float],
    losses: np.ndarray,
    *,
    threshold: float | None = None,
    relative_threshold: float = 0.1,
) -> tuple[np.ndarray, float]:
    """Learned-at step per example (NaN: not learned by the last checkpoint), and the
    threshold used. ``losses`` is (checkpoints, examples), rows in the order of ``steps``."""
    s = np.asarray(steps, dtype=float)
    order = np.argsort(s)
    s, loss = s[order], np.asarray(losses, dtype=np.float64)[order]
    if threshold is None:
        threshold = relative_threshold * float(np.median(loss[0]))
    above = ~(loss <= threshold)  # NaN counts as not learned
    # index of the last checkpoint above the threshold; learned from the next one on
    last_above = np.where(above.any(0), len(s) - 1 - np.argmax(above[::-1], axis=0), -1)
    out = np.full(loss.shape[1], np.nan)
    learned = last_above < len(s) - 1
    out[learned] = s[last_above[learned] + 1]
    return out, float(threshold)


@dataclass
class Agreement:
    rho: float  # Spearman rank correlation of learned-at steps (NaN if undefined)
    n: int  # examples learned in both runs


def rank_agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    """Spearman correlation of two runs' learned-at steps over examples both learned."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    if n < 3 or np.ptp(a[both]) == 0 or np.ptp(b[both]) == 0:
        return Agreement(float("nan"), n)
    return Agreement(float(spearmanr(a[both], b[both]).statistic), n)


def order_by_learned_at(learned: np.ndarray) -> np.ndarray:
    """Example indices sorted by learned-at step, never-learned last (stable)."""
    key = np.where(np.isfinite(learned), learned, np.inf)
    return np.argsort(key, kind="stable")


__all__ = [
    "Agreement",
    "learned_at",
    "order_by_learned_at",
    "per_example_losses",
    "rank_agreement",
]
