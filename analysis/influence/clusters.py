"""Clusters of per-token susceptibility vectors (scikit-learn's k-means and PCA).

Each token of the observable sets has one susceptibility per weight group: a vector over
the groups. Tokens whose vectors point the same way are shaped by the same components
(Baker et al. 2025 find e.g. induction-pattern tokens, delimiters, word-initial tokens as
clusters). k-means groups them, k chosen by silhouette unless given; a 2-D PCA projection
places them on a scatter plot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TokenClusters", "cluster_vectors"]

# silhouette_score on at most this many vectors (it is quadratic in them)
SILHOUETTE_SAMPLE = 2000


@dataclass
class TokenClusters:
    """k-means labels and a 2-D PCA projection of the vectors that had no NaN."""

    kept: np.ndarray  # (M,) indices into the input rows (rows with a NaN are left out)
    labels: np.ndarray  # (M,) cluster of each kept row
    coords: np.ndarray  # (M, 2) PCA projection
    centers: np.ndarray  # (k, G) cluster means in the input units
    k: int
    silhouette: float | None  # of the chosen k (None: fewer than 3 rows or one cluster)
    explained_variance: list[float]  # of the two PCA axes


def cluster_vectors(
    vectors: np.ndarray,
    *,
    n_clusters: int | None = None,
    max_clusters: int = 8,
    seed: int = 0,
) -> TokenClusters:
    """Cluster the rows of ``vectors`` (N, G); rows holding a NaN are left out.

    ``n_clusters`` None picks k in 2..``max_clusters`` by the best silhouette score.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be (N, G), got shape {x.shape}")
    kept = np.flatnonzero(np.isfinite(x).all(axis=1))
    x = x[kept]
    m = len(x)
    if m == 0:
        empty = np.zeros((0, 2))
        return TokenClusters(kept, np.zeros(0, int), empty, np.zeros((0, x.shape[1])), 0, None, [])
    distinct = len(np.unique(x, axis=0))
    if n_clusters is not None:
        candidates = [max(1, min(n_clusters, distinct))]
    else:
        candidates = list(range(2, min(max_clusters, distinct - 1) + 1)) or [1]
    best: tuple[float, KMeans] | None = None
    for k in candidates:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        score = (
            float(
                silhouette_score(
                    x, km.labels_, sample_size=min(m, SILHOUETTE_SAMPLE), random_state=seed
                )
            )
            if 1 < k < m
            else float("-inf")
        )
        if best is None or score > best[0]:
            best = (score, km)
    assert best is not None
    score, km = best
    # PCA needs two rows that differ (a single row, or identical ones, have no variance to
    # share out: they all sit at the origin)
    dims = min(2, x.shape[1], m) if distinct > 1 else 0
    pca = PCA(n_components=dims, random_state=seed).fit(x) if dims > 0 else None
    coords = np.zeros((m, 2))
    explained: list[float] = []
    if pca is not None:
        coords[:, :dims] = pca.transform(x)
        explained = [float(v) for v in pca.explained_variance_ratio_]
    return TokenClusters(
        kept=kept,
        labels=km.labels_.astype(int),
        coords=coords,
        centers=km.cluster_centers_,
        k=int(km.n_clusters),
        silhouette=None if not np.isfinite(score) else score,
        explained_variance=explained,
    )
