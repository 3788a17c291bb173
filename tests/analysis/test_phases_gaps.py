"""LLC stage detection never bridges a gap of untrusted estimates."""

from __future__ import annotations

import numpy as np

from phaseboard.analysis.phases import detect_boundaries


def _curve() -> tuple[list[float], list[float], list[float]]:
    """Rising up to step ~300, (gap: no trusted estimate) from 400 to 900, falling after."""
    steps = np.unique(np.round(np.logspace(1, 4, 60))).tolist()
    kept = [s for s in steps if not 400 <= s <= 900]
    x = np.log10(kept)
    llc = np.where(np.array(kept) < 400, 10 + 20 * (x - 1), 40 - 15 * (x - 3)).tolist()
    return kept, llc, [s for s in steps if 400 <= s <= 900]


def test_a_peak_is_found_when_the_gap_is_not_declared() -> None:
    steps, llc, _ = _curve()
    found = detect_boundaries(steps, llc, [0.1] * len(steps), {})
    assert any(b.kind == "llc_peak" and 300 < b.step < 1000 for b in found)


def test_no_boundary_is_put_inside_a_declared_gap() -> None:
    steps, llc, gap = _curve()
    found = detect_boundaries(steps, llc, [0.1] * len(steps), {}, llc_breaks=gap)
    assert not [b for b in found if b.source == "llc" and 400 <= b.step <= 900]
