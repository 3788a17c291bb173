"""Essential dynamics: the path of a model's outputs over training, seen through PCA.

Following Hoogland et al. ("The Developmental Landscape of In-Context Learning"), the
outputs of every checkpoint on a fixed probe set are flattened into one vector per
checkpoint; PCA over checkpoints gives a low-dimensional picture of the developmental
path. Stage boundaries show up as *turning points*: the path doubles back along a
principal component, i.e. the component's velocity over log-step changes sign (a cusp
in the PC1-PC2 plane when it is sharp).

Pure functions on arrays and modules; the worker gathers the outputs checkpoint by
checkpoint (``probe_outputs``) and hands the stacked matrix to ``essential_dynamics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .phases import Boundary, persistent_extrema
from .tasks.base import Batch, Task, to_device

SOURCE = "essential_dynamics"


@dataclass
class EssentialDynamics:
    """PCA of the outputs over checkpoints, and the path's turning points."""

    steps: list[int]
    components: list[list[float]]  # (checkpoints, k): the path in PC space
    explained_variance: list[float]  # fraction of the total variance per component
    turning_points: list[Boundary] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "components": self.components,
            "explained_variance": self.explained_variance,
            "turning_points": [b.to_dict() for b in self.turning_points],
        }


def probe_split(task: Task, split: str = "test") -> str:
    """The split ``probe_batch`` takes its examples from: ``split``, or train if absent."""
    return split if split in task.datasets() else "train"


def probe_batch(task: Task, max_examples: int = 128, split: str = "test") -> Batch:
    """The probe set: the first ``max_examples`` rows of ``split`` (train if absent).

    Deterministic (the task's datasets are), so every checkpoint and every run of the
    same task config sees the same examples.
    """
    return task.datasets()[probe_split(task, split)][:max_examples]


def lens_probe(task: Task, max_examples: int = 128) -> tuple[Batch, str]:
    """Essential dynamics' probe set and where it comes from: the task's seed-independent
    ``shared_probe`` ("shared"), so seeds of one config are compared on the same inputs,
    else ``probe_batch`` of the test split."""
    shared = task.shared_probe(max_examples)
    if shared is not None:
        return shared, "shared"
    return probe_batch(task, max_examples), probe_split(task)


def probe_hash(batch: Batch) -> str:
    """A fingerprint of the probe examples themselves (sha256 of every tensor's dtype, shape
    and bytes, in order; 16 hex digits): two runs whose probe hashes agree were probed on
    the same examples, whatever else in their task configs (seeds, learning rates) differs.
    """
    import hashlib

    h = hashlib.sha256()

    def feed(x: object) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, list | tuple):
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())

    feed(batch)
    return h.hexdigest()[:16]


@torch.no_grad()
def probe_outputs(task: Task, model: nn.Module, batch: Batch, device: str = "cpu") -> np.ndarray:
    """The model's outputs on the probe batch, flattened to one float32 vector."""
    model = model.to(device).eval()
    out = task.outputs(model, to_device(batch, device))
    return out.detach().float().flatten().cpu().numpy()


def pca(outputs: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Scores (T, k) of the rows of ``outputs`` (T, D) and explained-variance ratios (k,).

    Centred SVD; a matrix of rank < k gets zero columns. Each component's sign is fixed so
    that its score at the last checkpoint is >= its score at the first (a stable picture
    as checkpoints arrive).
    """
    x = np.asarray(outputs, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    total = float((s**2).sum())
    scores = np.zeros((x.shape[0], k))
    ratio = np.zeros(k)
    m = min(k, len(s))
    scores[:, :m] = u[:, :m] * s[:m]
    if total > 0:
        ratio[:m] = s[:m] ** 2 / total
    flip = np.where(scores[-1] < scores[0], -1.0, 1.0)
    return scores * flip, ratio


def turning_points(
    steps: Sequence[float],
    components: np.ndarray,
    *,
    smoothing: float = 0.1,
    min_score: float = 0.1,
    grid_size: int = 400,
) -> list[Boundary]:
    """Where the path doubles back along a component: sign changes of its velocity.

    Each component's scores are smoothed over log10(step) with a Gaussian kernel of
    ``smoothing`` decades (widened to the median checkpoint spacing) on a fine grid; a
    local extremum is a turning point. ``score`` is the extremum's persistence (how far
    the path travels back before turning again) over the spread of the whole path
    (root of the summed variance of the components), so it is scale-free; turns scoring
    below ``min_score`` (10 % of the path's spread) are dropped. Turns of different
    components within ``2 * smoothing`` decades are one turning point (the best score).
    Checkpoints at step <= 0 are left out (no log-step).
    """
    s = np.asarray(steps, dtype=float)
    c = np.asarray(components, dtype=float)
    keep = s > 0
    s, c = s[keep], c[keep]
    if len(s) < 5:
        return []
    order = np.argsort(s)
    x, c = np.log10(s[order]), c[order]
    spread = math.sqrt(float(c.var(0).sum()))
    if spread == 0:
        return []
    width = max(smoothing, float(np.median(np.diff(x))))
    grid = np.linspace(x[0], x[-1], grid_size)
    w = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / width) ** 2)  # (G, T)
    smooth = (w @ c) / w.sum(1, keepdims=True)  # (G, k)
    found: list[Boundary] = []
    for j in range(c.shape[1]):
        for i, persistence in persistent_extrema(smooth[:, j]):
            score = persistence / spread
            if score >= min_score:
                found.append(
                    Boundary(
                        float(10 ** grid[i]), SOURCE, "turning_point", float(score), f"PC{j + 1}"
                    )
                )
    out: list[Boundary] = []
    for b in sorted(found, key=lambda b: -b.score):
        if all(abs(math.log10(b.step) - math.log10(o.step)) > 2 * width for o in out):
            out.append(b)
    return sorted(out, key=lambda b: b.step)


def essential_dynamics(
    steps: Sequence[int], outputs: np.ndarray, *, k: int = 3, **turning_kwargs: float
) -> EssentialDynamics:
    """PCA of ``outputs`` (checkpoints x flattened outputs) and its turning points."""
    scores, ratio = pca(outputs, k)
    order = np.argsort(np.asarray(steps))
    steps_sorted = [int(steps[i]) for i in order]
    scores = scores[order]
    return EssentialDynamics(
        steps=steps_sorted,
        components=scores.tolist(),
        explained_variance=ratio.tolist(),
        turning_points=turning_points(steps_sorted, scores, **turning_kwargs),
    )


__all__ = [
    "SOURCE",
    "EssentialDynamics",
    "essential_dynamics",
    "pca",
    "lens_probe",
    "probe_batch",
    "probe_hash",
    "probe_outputs",
    "probe_split",
    "turning_points",
]
