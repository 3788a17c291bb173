"""Stage-boundary detection on LLC and loss curves.

Two detectors, both working over log10(step) because developmental stages are
roughly evenly spread in log-time:

* ``llc_boundaries``: critical points of the smoothed LLC curve, where its slope
  changes sign (Hoogland et al., "The Developmental Landscape of In-Context
  Learning"). An extremum is kept only if its persistence (how far the curve
  must travel to the neighbouring extremum on either side) is large relative to
  the noise of the smoothed curve, so a flat noisy curve yields no boundary.
* ``loss_change_points``: change points of a piecewise-linear fit to log-loss over
  log-step (``ruptures`` Pelt, penalty scaled by a robust noise estimate), unless one
  smooth relaxation law (power law or stretched exponential onto a floor) fits as well:
  then the curve's bend is not a stage.

Other lenses add candidates (``analysis.essential_dynamics`` turning points,
``measure_jumps`` of progress measures); ``merge_sources`` joins candidates of different
sources that agree within ``AGREE_DECADES`` of log-step, and the joined ``source`` says so.

``ema_smooth`` is TensorBoard's debiased EMA, shared with the UI and the server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ruptures
from scipy.optimize import least_squares

ArrayLike = Sequence[float] | np.ndarray


@dataclass
class Boundary:
    """A detected stage boundary at ``step`` (a float: it may fall between checkpoints)."""

    step: float
    # "llc" | "loss:<series>" | "essential_dynamics" | "progress:<measure>"; several
    # sources that agree are joined by "+" (see ``merge_sources``)
    source: str
    kind: str  # "llc_peak" | "llc_trough" | "change_point" | "turning_point"
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
    min_score: float = 5.5,
    grid_size: int = 400,
    scales: Sequence[float] = (1.0, 2.0, 3.0),
) -> list[Boundary]:
    """Critical points of the LLC curve over log-step.

    ``smoothing`` is the Gaussian kernel width in decades of step (widened to the
    median checkpoint spacing when checkpoints are sparser). ``score`` is an
    extremum's persistence divided by the standard error of the smoothed curve; the
    per-point noise is the larger of the curve's own scatter (MAD of differences)
    and the median of ``stds`` (per-checkpoint LLC std) when given. Extrema scoring
    below ``min_score`` are dropped (5.5 keeps pure noise out; see the tests). The curve is
    smoothed at each of ``scales`` times that width; the wider kernels find broad peaks of
    a few noise stds (height 10 against chain std 4) that the narrow one leaves in noise.
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
    # Several kernel widths: a narrow one localises sharp features, a wide one averages
    # the noise down enough to see a broad peak of a few chain stds. An extremum found at
    # several widths is reported once, at the width where it scores best.
    base = max(smoothing, float(np.median(np.diff(x))))
    grid = np.linspace(x[0], x[-1], grid_size)
    candidates: list[Boundary] = []
    for width in (base * f for f in scales):
        w = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / width) ** 2)  # (G, N)
        w_sum = w.sum(1)
        smooth = (w @ y) / w_sum
        n_eff = w_sum**2 / (w**2).sum(1)  # effective points under the kernel
        sigma_smooth = point_sigma / np.sqrt(n_eff)
        for i, persistence in persistent_extrema(smooth):
            score = persistence / float(sigma_smooth[i])
            if score < min_score:
                continue
            up = smooth[i] > smooth[min(i + 1, grid_size - 1)]
            kind = "llc_peak" if up else "llc_trough"
            candidates.append(Boundary(float(10 ** grid[i]), "llc", kind, float(score)))
    out: list[Boundary] = []
    for b in sorted(candidates, key=lambda b: -b.score):
        same = [
            o
            for o in out
            if o.kind == b.kind and abs(math.log10(o.step) - math.log10(b.step)) <= 2 * base
        ]
        if not same:
            out.append(b)
    return sorted(out, key=lambda b: b.step)


def persistent_extrema(y: np.ndarray) -> list[tuple[int, float]]:
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
    smooth_gate: bool = True,
) -> list[Boundary]:
    """Change points in the slope of (log) loss over log-step.

    Points are averaged in at most ``grid_size`` equal log-step bins (linear eval
    schedules would otherwise crowd late steps), then fitted piecewise-linearly
    with Pelt. The default penalty is ``penalty_scale * sigma^2 * log(n)`` per
    breakpoint (BIC-like, a little stricter since Pelt searches every segmentation),
    sigma a robust noise estimate floored at ``noise_floor`` (log-units: ~2%) and at
    ``relative_floor`` times the curve's range (so only bends that matter count).
    ``score`` is sqrt(cost saved by the breakpoint) / sigma.

    ``smooth_gate``: a positive loss curve that one smooth relaxation law fits as well as
    the lines do (``smooth_law_sse``) gets no change point: the bend of
    ``0.5 + 3 t^-0.5`` or of an exponential decay onto a floor is not a stage.
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

    edges = [0, *bkps, n]
    if bkps and log_values and smooth_gate:
        # A curve one smooth relaxation law explains (a power law or a stretched
        # exponential levelling off to a floor) has no stage: its bend is not a boundary.
        # The law has about the freedom of two lines and a knot, so it wins if it fits
        # as well as the k-breakpoint fit with one breakpoint's penalty to spare.
        sse_lines = sum(sse(edges[k], edges[k + 1]) for k in range(len(edges) - 1))
        allowed = sse_lines + penalty * (len(bkps) - 1)
        if smooth_law_sse(xg, yg, good_enough=allowed) <= allowed:
            return []

    out = []
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


def _power_law(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log(f + A t^-a) at t = 10^x; p = (log f, log A, a)."""
    return np.logaddexp(p[0], p[1] - p[2] * math.log(10) * x)


def _stretched_exp(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log(f + A exp(-(t/tau)^b)) at t = 10^x; p = (log f, log A, log tau, b), b <= 1."""
    return np.logaddexp(p[0], p[1] - np.exp(p[3] * (math.log(10) * x - p[2])))


def smooth_law_sse(x: np.ndarray, y: np.ndarray, good_enough: float = 0.0) -> float:
    """Least residual sum of squares of log-loss ``y`` over log10-step ``x`` by a smooth law.

    The laws are the two shapes a loss takes when nothing happens but relaxation: a
    power law onto a floor and a stretched exponential (exponent <= 1, so never sharper
    than a plain exponential) onto a floor. A few starting points each; bounded fits.
    Stops at the first fit whose SSE is at most ``good_enough``.
    """
    lo, hi, ln10 = float(y.min()), float(y.max()), math.log(10)
    best = math.inf
    starts: list[tuple[Any, np.ndarray, tuple[list[float], list[float]]]] = [
        (
            _power_law,
            np.array([lo - 0.1, hi + a * ln10 * x[0], a]),
            ([-60, -60, 1e-3], [60, 200, 5]),
        )
        for a in (0.3, 1.0)
    ]
    starts += [
        (
            _stretched_exp,
            np.array([lo - 0.1, hi, ln10 * float(np.quantile(x, q)), 1.0]),
            ([-60, -60, -60, 0.05], [60, 60, 60, 1.0]),
        )
        for q in (0.2, 0.5, 0.8)
    ]
    for law, p0, bounds in starts:
        p0 = np.clip(p0, np.array(bounds[0]) + 1e-6, np.array(bounds[1]) - 1e-6)
        fit = least_squares(lambda p, law=law: law(p, x) - y, p0, bounds=bounds, max_nfev=100)
        best = min(best, float(np.sum(fit.fun**2)))
        if best <= good_enough:
            break
    return best


_persistent_extrema = persistent_extrema  # the old private name

AGREE_DECADES = 0.1
"""Boundaries from different sources within this many decades of log10(step) agree."""


def measure_jumps(steps: ArrayLike, values: ArrayLike, *, name: str) -> list[Boundary]:
    """Jumps of a progress measure (change points of its slope over log-step).

    Source ``progress:<name>``. Values are taken as they are (a measure may be negative
    or a score near zero), and there is no smooth-law gate: a measure that moves at all
    moves because something was learned.
    """
    return loss_change_points(
        steps, values, source=f"progress:{name}", log_values=False, smooth_gate=False
    )


def merge_sources(
    found: Sequence[Boundary], *, agree_decades: float = AGREE_DECADES
) -> list[Boundary]:
    """Merge boundaries of different sources that lie within ``agree_decades`` of each other.

    A group of several sources becomes one boundary at its best-scoring member's step and
    kind; its ``source`` lists every agreeing source sorted and joined by ``+`` (e.g.
    ``essential_dynamics+llc``), which is how pages mark agreement. Two boundaries of the
    same source are never merged into each other's group: a source's own detector has
    already decided they are distinct.
    """
    found = sorted(found, key=lambda b: b.step)
    groups: list[list[Boundary]] = []
    for b in found:
        if (
            groups
            and math.log10(b.step) - math.log10(groups[-1][0].step) <= agree_decades
            and b.source not in {g.source for g in groups[-1]}
        ):
            groups[-1].append(b)
        else:
            groups.append([b])
    out = []
    for group in groups:
        best = max(group, key=lambda b: b.score)
        source = "+".join(sorted({b.source for b in group}))[:100]
        out.append(Boundary(best.step, source, best.kind, best.score, best.label))
    return out


def agreeing_sources(boundary: Boundary) -> list[str]:
    """The sources a (merged) boundary stands for."""
    return boundary.source.split("+")


def detect_boundaries(
    llc_steps: ArrayLike,
    llc: ArrayLike,
    llc_std: ArrayLike | None,
    loss_series: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    merge_decades: float = AGREE_DECADES,
    llc_breaks: ArrayLike | None = None,
    extra: Sequence[Boundary] = (),
    **llc_kwargs: Any,
) -> list[Boundary]:
    """LLC critical points, loss change points and ``extra`` candidates, sorted by step.

    ``llc_breaks``: steps where the LLC curve has a gap (a checkpoint whose estimate
    is missing or not trusted); the LLC detector runs on each stretch between gaps
    separately and never smooths or interpolates across one.
    ``extra`` carries boundaries found by other lenses (essential-dynamics turning
    points, progress-measure jumps). Boundaries of different sources within
    ``merge_decades`` of each other (log10 step) are merged (``merge_sources``).
    """
    found: list[Boundary] = list(extra)
    for seg_steps, seg_llc, seg_std in _segments(llc_steps, llc, llc_std, llc_breaks):
        found += llc_boundaries(seg_steps, seg_llc, stds=seg_std, **llc_kwargs)
    for name, (s, v) in loss_series.items():
        found += loss_change_points(s, v, source=f"loss:{name}")
    return merge_sources(found, agree_decades=merge_decades)


__all__ = [
    "AGREE_DECADES",
    "Boundary",
    "agreeing_sources",
    "detect_boundaries",
    "ema_smooth",
    "llc_boundaries",
    "loss_change_points",
    "measure_jumps",
    "merge_sources",
    "persistent_extrema",
    "smooth_law_sse",
]
