"""Several runs (seeds) on one picture: group bands, function-space distance, joint PCA.

Pure numpy on series and output matrices that per-run jobs already stored; the server reads
those results and hands them here, so no forward pass happens for a cross-run statistic.

- ``group_band``: mean and a band (min-max, or mean ± one sample standard deviation) of one
  measure over a group of runs, on a common step grid.
- ``function_distance``: how far two runs' functions are apart at each common checkpoint:
  the RMS difference of their outputs on the shared probe set.
- ``joint_pca``: the runs' essential-dynamics paths in *one* PC space, fitted on all runs'
  outputs stacked, so paths can be compared directly (a per-run PCA has its own axes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BANDS = ("minmax", "std")


@dataclass
class GroupBand:
    steps: np.ndarray  # (G,) the common grid
    mean: np.ndarray  # (G,)
    lower: np.ndarray  # (G,)
    upper: np.ndarray  # (G,)
    n: int  # runs in the band
    band: str  # "minmax" | "std"


def _clean(steps: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points, sorted by step, one value per step (the last given wins)."""
    s = np.asarray(steps, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if len(s) > 1:  # np.unique keeps the first of equal steps; reverse to keep the last
        _, last = np.unique(s[::-1], return_index=True)
        idx = len(s) - 1 - last
        s, v = s[idx], v[idx]
    return s, v


def common_grid(steps: Sequence[np.ndarray], max_points: int | None = None) -> np.ndarray:
    """Union of the runs' steps inside the range every run covers (empty if none).

    With ``max_points``, an evenly spaced pick (by index) of at most that many grid steps,
    ends included.
    """
    if not steps or any(len(s) == 0 for s in steps):
        return np.zeros(0)
    lo = max(float(s[0]) for s in steps)
    hi = min(float(s[-1]) for s in steps)
    if lo > hi:
        return np.zeros(0)
    grid = np.unique(np.concatenate(steps))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if max_points is not None and len(grid) > max_points:
        grid = grid[np.unique(np.linspace(0, len(grid) - 1, max_points).round().astype(int))]
    return grid


def on_grid(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A run's values at the grid steps: its own value where it has the step, otherwise
    linear interpolation in log(step + 1) between its checkpoints either side."""
    if len(steps) == 1:
        return np.full(len(grid), values[0])
    return np.interp(np.log1p(np.maximum(grid, 0)), np.log1p(np.maximum(steps, 0)), values)


def group_band(
    series: Sequence[tuple[Sequence[float], Sequence[float]]],
    band: str = "minmax",
    max_points: int | None = None,
) -> GroupBand:
    """Mean and band of one measure over a group of runs, on a common step grid.

    ``series``: per run ``(steps, values)``; non-finite points are dropped. The grid is the
    union of the runs' steps restricted to the range all runs cover ([largest first step,
    smallest last step]). Where a run has a grid step its value is used as is; where it has
    not, its value is interpolated linearly in log(step + 1) between its neighbouring steps
    (runs logged at the same steps are therefore never interpolated). ``band``: "minmax" is
    the pointwise minimum and maximum over the runs; "std" is mean ± the sample standard
    deviation over runs (ddof=1; zero width for a single run). Runs without any finite point
    cannot be placed on a grid: the caller leaves them out.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    cleaned = [_clean(s, v) for s, v in series]
    grid = common_grid([s for s, _ in cleaned], max_points)
    if len(grid) == 0:
        empty = np.zeros(0)
        return GroupBand(empty, empty, empty, empty, len(cleaned), band)
    y = np.stack([on_grid(s, v, grid) for s, v in cleaned])  # (runs, G)
    mean = y.mean(0)
    if band == "minmax":
        lower, upper = y.min(0), y.max(0)
    else:
        sd = y.std(0, ddof=1) if len(y) > 1 else np.zeros_like(mean)
        lower, upper = mean - sd, mean + sd
    return GroupBand(grid, mean, lower, upper, len(cleaned), band)


def function_distance(
    steps_a: Sequence[int],
    outputs_a: np.ndarray,
    steps_b: Sequence[int],
    outputs_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, rms)``: at every step both runs have a checkpoint at, the RMS difference of
    their outputs on the shared probe set, sqrt(mean_d (a_d - b_d)^2).

    ``outputs_*``: (checkpoints, D), rows in the order of ``steps_*``; D must agree (the same
    probe set and output shape). Steps only one run has are left out (no interpolation of
    functions between checkpoints).
    """
    a = np.asarray(outputs_a, dtype=np.float64)
    b = np.asarray(outputs_b, dtype=np.float64)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"outputs differ in shape: {a.shape[1:]} vs {b.shape[1:]}")
    ia = {int(s): i for i, s in enumerate(steps_a)}
    ib = {int(s): i for i, s in enumerate(steps_b)}
    common = sorted(set(ia) & set(ib))
    if not common:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    da = a[[ia[s] for s in common]].reshape(len(common), -1)
    db = b[[ib[s] for s in common]].reshape(len(common), -1)
    rms = np.sqrt(((da - db) ** 2).mean(1))
    return np.asarray(common, dtype=np.int64), rms


@dataclass
class JointPCA:
    steps: list[np.ndarray]  # per run (T_i,), sorted
    components: list[np.ndarray]  # per run (T_i, k): the run's path in the shared PC space
    explained_variance: np.ndarray  # (k,) fraction of the stacked outputs' total variance


def joint_pca(runs: Sequence[tuple[Sequence[int], np.ndarray]], n_components: int = 3) -> JointPCA:
    """All runs' outputs (checkpoints x D each) stacked, centred by their common mean, and
    one SVD: every run's checkpoints get coordinates in the same PC space.

    As in ``analysis.essential_dynamics.pca``: components beyond the rank are zero, and each
    component's sign is fixed so that the paths on average move towards + (the mean over
    runs of last minus first score is >= 0). Each run's rows are sorted by step.
    """
    if not runs:
        raise ValueError("joint PCA needs at least one run")
    mats, steps = [], []
    for s, out in runs:
        s = np.asarray(s, dtype=np.int64)
        x = np.asarray(out, dtype=np.float64).reshape(len(s), -1)
        order = np.argsort(s, kind="stable")
        steps.append(s[order])
        mats.append(x[order])
    if len({m.shape[1] for m in mats}) > 1:
        raise ValueError("runs' outputs differ in size: not the same probe set")
    x = np.concatenate(mats)  # (sum T_i, D)
    x = x - x.mean(0, keepdims=True)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    k = n_components
    m = min(k, len(sv))
    scores = np.zeros((x.shape[0], k))
    scores[:, :m] = u[:, :m] * sv[:m]
    ratio = np.zeros(k)
    total = float((sv**2).sum())
    if total > 0:
        ratio[:m] = sv[:m] ** 2 / total
    bounds = np.cumsum([0] + [len(s) for s in steps])
    per_run = [scores[bounds[i] : bounds[i + 1]] for i in range(len(steps))]
    drift = np.mean([p[-1] - p[0] for p in per_run], axis=0)
    flip = np.where(drift < 0, -1.0, 1.0)
    return JointPCA(steps, [p * flip for p in per_run], ratio)


__all__ = [
    "BANDS",
    "GroupBand",
    "JointPCA",
    "common_grid",
    "function_distance",
    "group_band",
    "joint_pca",
    "on_grid",
]
