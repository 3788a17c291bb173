"""Stage boundaries where susceptibilities or influences change sign over training.

Influence dynamics: between stages, which examples help and which compete changes, so
pairwise influences (and a weight group's susceptibility to a data subset) flip sign near
stage boundaries. Given S series over K checkpoints with standard errors, a series *flips*
between consecutive checkpoints when its sign changes and both values are at least ``z``
standard errors from zero. An interval where the share of flipping series (among those
significant at both ends) is a local maximum, and at least ``min_fraction`` with at least
``min_flips`` flips, is a boundary: placed midway between the two checkpoints in
log(step + 1), scored by the flips' mean evidence (the smaller |value| / se of the two
ends, in units of noise, as the other boundary sources score).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..phases import Boundary

__all__ = ["SignFlips", "sign_change_boundaries", "sign_flips"]


class SignFlips:
    """Per interval between consecutive checkpoints: flips, candidates, evidence."""

    def __init__(self, flips: np.ndarray, eligible: np.ndarray, evidence: np.ndarray) -> None:
        self.flips = flips  # (K - 1, S) bool
        self.eligible = eligible  # (K - 1, S) bool: significant at both ends
        self.evidence = evidence  # (K - 1, S): min(|z_k|, |z_k+1|)

    @property
    def counts(self) -> np.ndarray:
        return self.flips.sum(axis=1)

    @property
    def fractions(self) -> np.ndarray:
        n = self.eligible.sum(axis=1)
        return np.where(n > 0, self.counts / np.maximum(n, 1), 0.0)


def sign_flips(values: np.ndarray, se: np.ndarray | None = None, *, z: float = 2.0) -> SignFlips:
    """``values`` (S, K) series over checkpoints (NaN: missing); ``se`` (S, K) or None
    (then any nonzero finite value counts as significant)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be (series, checkpoints), got shape {v.shape}")
    if se is None:
        zs = np.where(np.isfinite(v) & (v != 0), np.inf * np.sign(v), np.nan)
    else:
        s = np.asarray(se, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            zs = np.where(s > 0, v / s, np.where(v != 0, np.inf * np.sign(v), np.nan))
    a, b = zs[:, :-1].T, zs[:, 1:].T  # (K - 1, S)
    with np.errstate(invalid="ignore"):
        eligible = (np.abs(a) >= z) & (np.abs(b) >= z)
        flips = eligible & (np.sign(a) != np.sign(b))
        evidence = np.where(flips, np.minimum(np.abs(a), np.abs(b)), 0.0)
    return SignFlips(flips, eligible, evidence)


def _midpoint(s0: float, s1: float) -> float:
    return float(np.expm1((np.log1p(max(s0, 0.0)) + np.log1p(max(s1, 0.0))) / 2))


def sign_change_boundaries(
    steps: Sequence[float],
    values: np.ndarray,
    se: np.ndarray | None = None,
    *,
    source: str,
    names: Sequence[str] | None = None,
    z: float = 2.0,
    min_fraction: float = 0.0,
    min_flips: int = 1,
    max_evidence: float = 50.0,
) -> list[Boundary]:
    """Boundaries at intervals where the most series flip sign (see the module docstring).

    ``steps`` (K,) increasing; ``values``/``se`` (S, K). ``names`` label the flipping series
    in the boundary's label (first three). Evidence is capped at ``max_evidence`` (a value
    with no spread, e.g. from a single chain, would otherwise count as infinitely sure).
    """
    steps = [float(s) for s in steps]
    if len(steps) < 2:
        return []
    f = sign_flips(values, se, z=z)
    counts, fractions = f.counts, f.fractions
    out: list[Boundary] = []
    for i in range(len(counts)):
        if counts[i] < min_flips or fractions[i] < min_fraction:
            continue
        left = fractions[i - 1] if i > 0 else -1.0
        right = fractions[i + 1] if i + 1 < len(fractions) else -1.0
        if fractions[i] < right or fractions[i] <= left:  # a local maximum (first of a plateau)
            continue
        idx = np.flatnonzero(f.flips[i])
        evidence = float(np.minimum(f.evidence[i, idx], max_evidence).mean())
        label = f"{int(counts[i])}/{int(f.eligible[i].sum())} flip sign"
        if names is not None:
            top = idx[np.argsort(-f.evidence[i, idx])][:3]
            label += ": " + ", ".join(str(names[j]) for j in top)
        step = _midpoint(steps[i], steps[i + 1])
        if step <= 0:
            continue
        out.append(Boundary(step, source, "sign_change", evidence, label[:200]))
    return out
