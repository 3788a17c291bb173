"""Learning order: which examples a model learns when, and whether two runs agree.

Per example of a probe set, the loss at every checkpoint (a checkpoints x examples
matrix, stored compactly as float16 by the server). An example is **learned at** the
step from which its loss stays at or below a threshold at every later checkpoint: where
it last crosses below, interpolated in log-step between the checkpoints either side (an
example learned, forgotten and learned again counts from the last time). The threshold
is ``relative_threshold`` times the median loss at the first checkpoint unless given
absolutely: for cross-entropy from a uniform start (log p) the default 0.1 means "the
right answer has most of the probability".

Agreement between two runs on the same examples is the Spearman rank correlation of
their learned-at steps over the examples both runs learn ("Let's Agree to Agree";
"SGD learns functions of increasing complexity").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from .tasks.base import Batch, Task, to_device


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
    threshold used. ``losses`` is (checkpoints, examples), rows in the order of ``steps``.

    The step is where the loss last crosses below the threshold, interpolated linearly in
    (log10 step, log loss) between the checkpoints either side of the crossing (steps
    below 1 count as 1), so examples learned between the same two checkpoints are still
    ranked; an example below the threshold at every checkpoint is learned at the first.
    """
    s = np.asarray(steps, dtype=float)
    order = np.argsort(s)
    s, loss = s[order], np.asarray(losses, dtype=np.float64)[order]
    if threshold is None:
        threshold = relative_threshold * float(np.median(loss[0]))
    x = np.log10(np.maximum(s, 1.0))
    log_loss = np.log(np.maximum(loss, 1e-30))
    log_thr = math.log(max(threshold, 1e-30))
    above = ~(loss <= threshold)  # NaN counts as not learned
    n_ckpt, n_ex = loss.shape
    # index of the last checkpoint above the threshold (-1: never above)
    last = np.where(above.any(0), n_ckpt - 1 - np.argmax(above[::-1], axis=0), -1)
    out = np.full(n_ex, np.nan)
    out[last == -1] = s[0]
    mid = (last >= 0) & (last < n_ckpt - 1)
    i, j = last[mid], np.nonzero(mid)[0]
    hi, lo = log_loss[i, j], log_loss[i + 1, j]
    frac = np.where(np.isfinite(hi) & (hi > lo), (hi - log_thr) / (hi - lo), 1.0)
    frac = np.clip(frac, 0.0, 1.0)
    out[mid] = 10 ** (x[i] + frac * (x[i + 1] - x[i]))
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
