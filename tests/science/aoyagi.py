"""Aoyagi's exact learning coefficient of deep linear networks (test oracle).

Aoyagi (2024), "Consideration on the learning efficiency of multiple-layered neural
networks with linear units", Neural Networks 172; restated in Furman & Lau (2024),
"Estimating the local learning coefficient at scale". A DLN with layer widths
H_1 (input), ..., H_{L+1} (output) whose true map has rank r. With M_j = H_j - r, let
Sigma be a subset of {1..L+1} of size l+1 with

    max_{j in Sigma} M_j < min_{k not in Sigma} M_k,
    sum_{j in Sigma} M_j >= l * max_{j in Sigma} M_j,
    sum_{j in Sigma} M_j <  l * min_{k not in Sigma} M_k.

With S = sum_{Sigma} M_j and a = S - l * floor(S / l):

    lambda = (-r^2 + r (H_1 + H_{L+1})) / 2 + a (l - a) / (4 l)
             - l (l - 1) / 4 * (S / l)^2 + 1/2 * sum_{j < k in Sigma} M_j M_k

and the multiplicity is 1 if a == 0, else 2. Sanity checks: L = 1 gives d/2 = H_1 H_2 / 2
(a regular model), and L = 2 reproduces Aoyagi & Watanabe's reduced-rank regression.
"""

from __future__ import annotations

import itertools
from fractions import Fraction


def aoyagi_lambda(widths: list[int], rank: int) -> tuple[Fraction, int]:
    """(learning coefficient, multiplicity) of a DLN with ``widths`` = [H_1, ..., H_{L+1}]."""
    if rank > min(widths):
        raise ValueError("rank cannot exceed the narrowest layer")
    H1, HL = widths[0], widths[-1]
    M = [h - rank for h in widths]
    idx = range(len(M))
    base = Fraction(-(rank**2) + rank * (H1 + HL), 2)
    for size in range(2, len(M) + 1):  # l = size - 1 >= 1
        for sigma in itertools.combinations(idx, size):
            ell = size - 1
            inside = [M[j] for j in sigma]
            outside = [M[k] for k in idx if k not in sigma]
            S = sum(inside)
            min_out = min(outside) if outside else float("inf")
            if not (max(inside) < min_out and ell * max(inside) <= S < ell * min_out):
                continue
            a = S - ell * (S // ell)
            pairs = sum(x * y for x, y in itertools.combinations(inside, 2))
            lam = (
                base
                + Fraction(a * (ell - a), 4 * ell)
                - Fraction(ell * (ell - 1), 4) * Fraction(S, ell) ** 2
                + Fraction(pairs, 2)
            )
            return lam, (1 if a == 0 else 2)
    raise AssertionError(f"no admissible Sigma for widths={widths}, rank={rank}")
