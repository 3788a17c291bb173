"""Learning order: which examples a model learns when, and whether two runs agree.

Per example of a probe set, the loss at every checkpoint (a checkpoints x examples
matrix, stored compactly as float16 by the server). An example is **learned at** the
step from which its loss stays at or below its threshold at every later checkpoint: where
it last crosses below, interpolated in log-step between the checkpoints either side (an
example learned, forgotten and learned again counts from the last time).

The threshold is relative to the run's own losses, per example: its loss at the last
checkpoint plus ``relative_threshold`` (default 0.1) of its drop from the first
checkpoint, i.e. the step by which the example has made 90 % of the progress it makes
over the run. That means the same for a grokking network, whose losses fall to ~0, and a
language model, whose per-sequence losses fall from ln(vocab) to a few nats and never
near a tenth of where they started. An example whose loss fell by less than
``MIN_DROP`` of its first-checkpoint loss is not learned (NaN). An absolute
``threshold`` (one value for every example) is still accepted.

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

from .tasks.base import Batch, Task, to_device

# An example whose loss drops by less than this fraction of its first-checkpoint loss over
# the run has not been learned (relative thresholds only).
MIN_DROP = 0.1


@torch.no_grad()
def per_example_losses(
    task: Task, model: nn.Module, batch: Batch, device: str = "cpu"
) -> np.ndarray:
    """Loss of each example of ``batch`` (n,), float32, via the task's hook."""
    model = model.to(device).eval()
    return task.per_example_loss(model, to_device(batch, device)).float().cpu().numpy()


def thresholds(losses: np.ndarray, relative_threshold: float = 0.1) -> np.ndarray:
    """Per-example thresholds of a (checkpoints, examples) matrix in step order: the last
    checkpoint's loss plus ``relative_threshold`` x the drop from the first; NaN where the
    drop is under ``MIN_DROP`` of the first loss (not learned). See the module doc."""
    loss = np.asarray(losses, dtype=np.float64)
    first, last = loss[0], loss[-1]
    drop = first - last
    out = last + relative_threshold * drop
    learned = np.isfinite(drop) & (drop > MIN_DROP * np.abs(first))
    return np.where(learned, out, np.nan)


def learned_at(
    steps: Sequence[float],
    losses: np.ndarray,
    *,
    threshold: float | None = None,
    relative_threshold: float = 0.1,
) -> tuple[np.ndarray, float]:
    """Learned-at step per example (NaN: not learned by the last checkpoint), and the
    threshold used (with per-example thresholds, their median; NaN if none is learned).
    ``losses`` is (checkpoints, examples), rows in the order of ``steps``.

    The step is where the loss last crosses below the example's threshold (``thresholds``,
    or ``threshold`` for all), interpolated linearly in (log10 step, log loss) between
    the checkpoints either side of the crossing (steps below 1 count as 1), so examples
    learned between the same two checkpoints are still ranked; an example below its
    threshold at every checkpoint is learned at the first.
    """
    s = np.asarray(steps, dtype=float)
    order = np.argsort(s)
    s, loss = s[order], np.asarray(losses, dtype=np.float64)[order]
    n_ckpt, n_ex = loss.shape
    if threshold is None:
        thr = thresholds(loss, relative_threshold)
        finite = thr[np.isfinite(thr)]
        used = float(np.median(finite)) if finite.size else float("nan")
    else:
        thr = np.full(n_ex, float(threshold))
        used = float(threshold)
    x = np.log10(np.maximum(s, 1.0))
    log_loss = np.log(np.maximum(loss, 1e-30))
    log_thr = np.log(np.maximum(np.nan_to_num(thr, nan=1e-30), 1e-30))
    above = ~(loss <= thr)  # NaN (loss or threshold) counts as not learned
    # index of the last checkpoint above the threshold (-1: never above)
    last = np.where(above.any(0), n_ckpt - 1 - np.argmax(above[::-1], axis=0), -1)
    out = np.full(n_ex, np.nan)
    out[last == -1] = s[0]
    mid = (last >= 0) & (last < n_ckpt - 1)
    i, j = last[mid], np.nonzero(mid)[0]
    hi, lo = log_loss[i, j], log_loss[i + 1, j]
    frac = np.where(np.isfinite(hi) & (hi > lo), (hi - log_thr[j]) / (hi - lo), 1.0)
    frac = np.clip(frac, 0.0, 1.0)
    out[mid] = 10 ** (x[i] + frac * (x[i + 1] - x[i]))
    return out, used


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
    "thresholds",
]
