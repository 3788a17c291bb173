"""Bayesian influence and susceptibilities from the LLC sampler's draws.

Both lenses ride on the vectorised SGLD run of ``analysis.llc``: at every draw step every
row (checkpoint x weight group x chain) also evaluates per-example (or per-token) losses on
fixed example sets, so a trajectory's checkpoints are analysed in one batched run and the
LLC estimates of the same draws come with the result.

- ``bayesian_influence``: the BIF, correlation (or covariance) over posterior draws of
  per-example losses (Kreer et al.; devinterp ``slt/bif.py``).
- ``susceptibilities``: per weight group and observable data set (per token for token
  tasks), the response to a shift of the data distribution (Baker et al. 2025, appendix
  C.4 of arXiv 2504.18274; devinterp ``slt/susceptibilities.py``).
- ``cluster_vectors``: k-means (scikit-learn) of per-token susceptibility vectors.
- ``sign_change_boundaries``: stage boundaries where these change sign over training.
"""

from .bif import (
    InfluenceResult,
    bayesian_influence,
    bayesian_influence_many,
    influence_matrix,
    token_influence,
)
from .clusters import TokenClusters, cluster_vectors
from .dynamics import SignFlips, sign_change_boundaries, sign_flips
from .susceptibility import (
    SusceptibilityResult,
    susceptibilities,
    susceptibilities_many,
    susceptibility_from_draws,
)

__all__ = [
    "InfluenceResult",
    "SignFlips",
    "SusceptibilityResult",
    "TokenClusters",
    "bayesian_influence",
    "bayesian_influence_many",
    "cluster_vectors",
    "influence_matrix",
    "sign_change_boundaries",
    "sign_flips",
    "susceptibilities",
    "susceptibilities_many",
    "susceptibility_from_draws",
    "token_influence",
]
