"""Stage-boundary detection on LLC and loss curves.

Two detectors, both working over log10(step) because developmental stages are
roughly evenly spread in log-time:

* ``llc_boundaries``: critical points of the smoothed LLC curve, where its slope
  changes sign (Hoogland et al., "The Developmental Landscape of In-Context
  Learning"). An extremum is kept only if its persistence (how far the curve
  must travel to the neighbouring extremum on either side) is large relative to
  the noise of the smoothed curve, so a flat noisy curve yields no boundary.
* ``loss_change_points``: change points of a piecewise-linear fit to log-loss over
  log-step (``ruptures`` Pelt, penalty scaled by a robust noise estimate).

``ema_smooth`` is TensorBoard's debiased EMA, shared with the UI and the server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import ruptures

ArrayLike = Sequence[float] | np.ndarray


@dataclass
class Boundary:
    """A detected stage boundary at ``step`` (a float: it may fall between checkpoints)."""

    step: float
    source: str  # "llc" or "loss:<series>"
    kind: str  # "llc_peak" | "llc_trough" | "change_point"
    score: float  # evidence in units of noise; larger is surer
    label: str = ""

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def ema_smooth(values: ArrayLike, weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average (``weight`` in [0, 1)).

    Non-finite values pass through unchanged and do not enter the average.
    """
    out: list[float] = []
    last, count = 0.0, 0
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        debias = 1.0 if weight == 1 else 1 - weight**count
        out.append(last / debias)
    return out


def _robust_sigma(y: np.ndarray, order: int = 1) -> float:
    """Noise std from the MAD of ``order``-th differences (smooth trends cancel)."""
    if len(y) <= order + 1:
        return 0.0
    d = np.diff(y, n=order)
    scale = math.sqrt(math.comb(2 * order, order))  # std of the difference of iid noise
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / scale)


def _log_steps(steps: ArrayLike, *others: ArrayLike) -> tuple[np.ndarray, ...]:
    """log10(step) for positive, finite points, sorted by step; ``others`` filtered alike."""
    s = np.asarray(steps, dtype=float)
    arrays = [np.asarray(o, dtype=float) for o in others]
    keep = (s > 0) & np.isfinite(s)
    for a in arrays:
        keep &= np.isfinite(a)
    order = np.argsort(s[keep])
    return (np.log10(s[keep])[order], *(a[keep][order] for a in arrays))


def llc_boundaries(
    steps: ArrayLike,
    llc: ArrayLike,
    *,
    stds: ArrayLike | None = None,
    smoothing: float = 0.1,
    min_score: float = 6.0,
    grid_size: int = 400,
) -> list[Boundary]:
    """Critical points of the LLC curve over log-step.

    ``smoothing`` is the Gaussian kernel width in decades of step (widened to the
    median checkpoint spacing when checkpoints are sparser). ``score`` is an
    extremum's persistence divided by the standard error of the smoothed curve; the
    per-point noise is the larger of the curve's own scatter (MAD of differences)
    and the median of ``stds`` (per-checkpoint LLC std) when given. Extrema scoring
    below ``min_score`` are dropped (6 keeps pure noise out; see the tests).
    """
    x, y = _log_steps(steps, llc)
    if len(x) < 5:
        return []
    point_sigma = _robust_sigma(y)
    if stds is not None:
        _, s = _log_steps(steps, stds)
        point_sigma = max(point_sigma, float(np.median(s)))
    point_sigma = max(point_sigma, 1e-9 * (1 + float(np.abs(y).max())))

    # Nadaraya-Watson smoothing on a fine grid: sparse checkpoints still localise well.
    width = max(smoothing, float(np.median(np.diff(x))))
    grid = np.linspace(x[0], x[-1], grid_size)
    w = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / width) ** 2)  # (G, N)
    w_sum = w.sum(1)
    smooth = (w @ y) / w_sum
    n_eff = w_sum**2 / (w**2).sum(1)  # effective points under the kernel
    sigma_smooth = point_sigma / np.sqrt(n_eff)

    extrema = _persistent_extrema(smooth)
    out = []
    for i, persistence in extrema:
        score = persistence / float(sigma_smooth[i])
        if score < min_score:
            continue
        kind = "llc_peak" if smooth[i] > smooth[min(i + 1, grid_size - 1)] else "llc_trough"
        out.append(Boundary(float(10 ** grid[i]), "llc", kind, float(score)))
    return out


def _persistent_extrema(y: np.ndarray) -> list[tuple[int, float]]:
    """Interior local extrema of ``y`` with their persistence (endpoints never die).

    Repeatedly cancels the adjacent pair of extrema with the smallest height
    difference; an extremum's persistence is that difference when it dies. An
    interior extremum cancelled against an endpoint hands its value to the
    endpoint, so the neighbour on the other side still sees the full drop.
    """
    d = np.sign(np.diff(y))
    for i in range(1, len(d)):  # flat stretches keep the previous slope's sign
        if d[i] == 0:
            d[i] = d[i - 1]
    turning = [i + 1 for i in range(len(d) - 1) if d[i] * d[i + 1] < 0]
    points = [0, *turning, len(y) - 1]  # alternating max/min between the endpoints
    value = {p: float(y[p]) for p in points}
    persistence: dict[int, float] = {}
    while len(points) > 2:
        gaps = [abs(value[points[k + 1]] - value[points[k]]) for k in range(len(points) - 1)]
        k = int(np.argmin(gaps))
        a, b = points[k], points[k + 1]
        if k == 0 or k + 1 == len(points) - 1:
            end, inner = (a, b) if k == 0 else (b, a)
            persistence[inner] = gaps[k]
            value[end] = value[inner]
            points.remove(inner)
        else:
            persistence[a] = persistence[b] = gaps[k]
            points = points[:k] + points[k + 2 :]
    return sorted(persistence.items())


def _bin_means(x: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of x and y in ``bins`` equal-width bins of x (empty bins dropped)."""
    if len(x) <= bins:
        return x, y
    idx = np.minimum(((x - x[0]) / (x[-1] - x[0]) * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    keep = count > 0
    xs = np.bincount(idx, weights=x, minlength=bins)[keep] / count[keep]
    ys = np.bincount(idx, weights=y, minlength=bins)[keep] / count[keep]
    return xs, ys


def loss_change_points(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    source: str = "loss:train_loss",
    penalty: float | None = None,
    log_values: bool | None = None,
    grid_size: int = 100,
    min_size: int = 4,
    noise_floor: float = 0.02,
    relative_floor: float = 0.05,
    penalty_scale: float = 6.0,
) -> list[Boundary]:
    """Change points in the slope of (log) loss over log-step.

    Points are averaged in at most ``grid_size`` equal log-step bins (linear eval
    schedules would otherwise crowd late steps), then fitted piecewise-linearly
    with Pelt. The default penalty is ``penalty_scale * sigma^2 * log(n)`` per
    breakpoint (BIC-like, a little stricter since Pelt searches every segmentation),
    sigma a robust noise estimate floored at ``noise_floor`` (log-units: ~2%) and at
    ``relative_floor`` times the curve's range (so only bends that matter count).
    ``score`` is sqrt(cost saved by the breakpoint) / sigma.
    """
    x, y = _log_steps(steps, values)
    if len(x) < 2 * min_size:
        return []
    if log_values is None:
        log_values = bool(np.all(y > 0))
    if log_values:
        y = np.log(np.maximum(y, 1e-12))
    # noise of a single point: conservative for bins that average several points;
    # floored relative to the curve's range, or a smooth bend splits into many lines
    sigma = max(_robust_sigma(y, order=2), noise_floor, relative_floor * float(np.ptp(y)))
    xg, yg = _bin_means(x, y, grid_size)
    n = len(xg)
    if n < 2 * min_size:
        return []
    if penalty is None:
        penalty = penalty_scale * sigma**2 * math.log(n)
    signal = np.column_stack([yg, xg, np.ones(n)])
    algo = ruptures.Pelt(model="linear", min_size=min_size, jump=1).fit(signal)
    bkps = algo.predict(pen=penalty)[:-1]  # the last one is always n

    def sse(a: int, b: int) -> float:
        return float(algo.cost.error(a, b))

    out = []
    edges = [0, *bkps, n]
    for k, b in enumerate(bkps):
        left, right = edges[k], edges[k + 2]
        saved = max(sse(left, right) - sse(left, b) - sse(b, right), 0.0)
        step = 10 ** (0.5 * (xg[b - 1] + xg[b]))
        out.append(Boundary(float(step), source, "change_point", math.sqrt(saved) / sigma))
    return out


def _segments(
    steps: ArrayLike, llc: ArrayLike, stds: ArrayLike | None, breaks: ArrayLike | None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Split the LLC curve at every break step (a gap) into contiguous stretches."""
    s = np.asarray(steps, dtype=float)
    if not len(s):
        return []
    y = np.asarray(llc, dtype=float)
    e = None if stds is None else np.asarray(stds, dtype=float)
    order = np.argsort(s)
    s, y = s[order], y[order]
    e = None if e is None else e[order]
    b = np.sort(np.asarray(breaks if breaks is not None else [], dtype=float))
    seg_id = np.searchsorted(b, s)  # points between the same two breaks share an id
    out = []
    for k in np.unique(seg_id):
        m = seg_id == k
        out.append((s[m], y[m], None if e is None else e[m]))
    return out


def detect_boundaries(
    llc_steps: ArrayLike,
    llc: ArrayLike,
    llc_std: ArrayLike | None,
    loss_series: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    merge_decades: float = 0.05,
    llc_breaks: ArrayLike | None = None,
    **llc_kwargs: float,
) -> list[Boundary]:
    """LLC critical points plus loss change points, sorted by step.

    Boundaries within ``merge_decades`` of each other (in log10 step) are merged
    into the highest-scoring one; its ``source`` lists every source that agreed
    (``"llc+loss:train_loss"``); ``label`` stays for the user to name the stage.
    ``llc_breaks``: steps where the LLC curve has a gap (a checkpoint whose estimate
    is missing or not trusted); the LLC detector runs on each stretch between gaps
    separately and never smooths or interpolates across one.
    """
    found: list[Boundary] = []
    for seg_steps, seg_llc, seg_std in _segments(llc_steps, llc, llc_std, llc_breaks):
        found += llc_boundaries(seg_steps, seg_llc, stds=seg_std, **llc_kwargs)
    for name, (s, v) in loss_series.items():
        found += loss_change_points(s, v, source=f"loss:{name}")
    found.sort(key=lambda b: b.step)

    merged: list[list[Boundary]] = []
    for b in found:
        if merged and math.log10(b.step) - math.log10(merged[-1][-1].step) <= merge_decades:
            merged[-1].append(b)
        else:
            merged.append([b])
    out = []
    for group in merged:
        best = max(group, key=lambda b: b.score)
        sources = sorted({b.source for b in group})
        out.append(Boundary(best.step, "+".join(sources), best.kind, best.score, best.label))
    return out


__all__ = ["Boundary", "detect_boundaries", "ema_smooth", "llc_boundaries", "loss_change_points"]
