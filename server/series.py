"""Downsampling of long metric series for plotting: min and max per step bucket, ends kept.

Pure numpy, no I/O. A series of n sorted points becomes at most ``max_points`` points: the
step range ``[lo, hi]`` is cut into ``nb = (max_points - 2) // 2`` equal buckets
(``bucket = (step - lo) * nb // (hi - lo + 1)``) and each non-empty bucket keeps its lowest
and highest value (the earliest step on ties), plus the series' first and last point.
Spikes, dips and the global extremes therefore survive, which a stride would lose.
``server.series_store`` computes the same buckets in SQL.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_STEP", "downsample_minmax", "n_buckets"]

MAX_STEP = 2**53 - 1
"""Largest accepted step: doubles (the browser's numbers, PostgreSQL's float8 arrays in
``server.series_store``) hold every integer up to it exactly."""


def n_buckets(max_points: int) -> int:
    return max(1, (max_points - 2) // 2)


def downsample_minmax(
    steps: np.ndarray, values: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(steps, values)`` with at most ``max_points`` points (inputs sorted by step)."""
    n = len(steps)
    if n <= max_points:
        return steps, values
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    nb = n_buckets(max_points)
    lo, span = int(steps[0]), int(steps[-1]) - int(steps[0]) + 1
    if (span - 1) * nb <= np.iinfo(np.int64).max:
        bucket = (steps - lo) * nb // span  # non-decreasing, since steps are sorted
    else:  # steps near 2^53 times many buckets overflow int64: Python integers, exact
        bucket = np.array([(int(s) - lo) * nb // span for s in steps], dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    counts = np.diff(np.r_[starts, n])
    keep = [np.array([0, n - 1])]
    for reduce in (np.minimum, np.maximum):
        extreme = np.repeat(reduce.reduceat(values, starts), counts)
        hits = np.flatnonzero(values == extreme)
        _, first = np.unique(bucket[hits], return_index=True)  # earliest hit per bucket
        keep.append(hits[first])
    idx = np.unique(np.concatenate(keep))  # sorted: points stay in step order
    return steps[idx], values[idx]
