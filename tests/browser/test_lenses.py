"""The lens views on the run page, in a real Chromium against a real server.

Rows are written as the lens jobs would have written them (pages only read rows).
"""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa

from server.models import Checkpoint, PhaseBoundary, Result
from tests.browser.conftest import PHONE, shoot

pytestmark = pytest.mark.browser


def _seed_essential_dynamics(site) -> None:  # type: ignore[no-untyped-def]
    """A path that runs out along PC1, turns at step ~400 and comes back along PC2."""
    run_id = site.seeded.run_id
    with site.db.session() as s:
        steps = list(
            s.scalars(
                sa.select(Checkpoint.step)
                .where(Checkpoint.run_id == run_id)
                .order_by(Checkpoint.step)
            )
        )
        comps = []
        for st in steps:
            x = math.log10(st)
            comps.append([x - 2.5, -abs(x - 2.6) + 0.5, 0.1 * math.sin(3 * x)])
        turn = {
            "step": 400.0,
            "source": "essential_dynamics",
            "kind": "turning_point",
            "score": 0.6,
            "label": "PC2",
        }
        s.add(
            Result(
                run_id=run_id,
                kind="essential_dynamics",
                values={
                    "steps": steps,
                    "components": comps,
                    "explained_variance": [0.8, 0.15, 0.02],
                    "turning_points": [turn],
                    "probe_examples": 128,
                    "output_dim": 128 * 53,
                },
            )
        )
        s.add(
            PhaseBoundary(
                run_id=run_id,
                step=410.0,
                source="essential_dynamics+llc",
                kind="llc_peak",
                score=7.0,
            )
        )
        for st in steps:  # progress measures, as the metrics job stores them
            x = math.log10(st)
            grown = 1 / (1 + math.exp(-6 * (x - 2.6)))
            s.add(
                Result(
                    run_id=run_id,
                    step=st,
                    kind="metrics",
                    values={
                        "progress/restricted_loss": 4.0 * (1 - grown) + 0.01,
                        "progress/excluded_loss": 4.0 + 8.0 * grown,
                        "progress/prefix_matching": 0.05 + 0.6 * grown,
                        "progress/prefix_matching/l1.h0": 0.05 + 0.6 * grown,
                        "progress/prefix_matching/l1.h1": 0.05 + 0.1 * grown,
                    },
                )
            )


def test_run_page_shows_the_essential_dynamics_path_with_boundaries(site, page) -> None:
    _seed_essential_dynamics(site)
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    page.wait_for_selector("#lenses[data-loaded='true']", timeout=20_000)
    status = page.inner_text("#lenses-status")
    assert "20 checkpoints" in status and "80 %" in status and "1 turning point" in status
    names = page.evaluate("() => document.getElementById('plot-ed12').data.map(t => t.name || '')")
    assert {"checkpoints", "turning points", "phase boundaries"} <= set(names)
    # Hover on a checkpoint gives its step; boundaries say their source and agreement.
    hover = page.evaluate(
        "() => { const d = document.getElementById('plot-ed12').data;"
        " const pts = d.find(t => t.name === 'checkpoints');"
        " const bs = d.find(t => t.name === 'phase boundaries');"
        " return [pts.hovertemplate, pts.customdata.slice(0, 2), bs.hovertemplate.join('|')]; }"
    )
    assert hover[0].startswith("step %{customdata}") and hover[1] == [10, 14]
    assert "source essential_dynamics+llc" in hover[2] and "(sources agree)" in hover[2]
    assert "PC2 (15 %)" in page.inner_text("#plot-ed12")
    assert "PC3 (2 %)" in page.inner_text("#plot-ed13")
    # Progress measures: one panel per measure, per-head measures share their panel.
    page.wait_for_function("document.getElementById('plot-progress').data !== undefined")
    progress = page.evaluate("() => document.getElementById('plot-progress').data.map(t => t.name)")
    assert sorted(progress) == [
        "excluded_loss",
        "prefix_matching",
        "prefix_matching/l1.h0",
        "prefix_matching/l1.h1",
        "restricted_loss",
    ]
    assert "5 series in 3 panel(s)" in page.inner_text("#progress-status")
    panel_titles = page.locator("#plot-progress .annotation-text").all_text_contents()
    assert "prefix_matching (2 heads)" in panel_titles and "excluded_loss" in panel_titles
    assert page.locator("#plot-progress .shapelayer path").count() >= 3 * 3  # boundaries x panels
    page.locator("#lenses").scroll_into_view_if_needed()
    shoot(page, "lenses-ed-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(400)
    shoot(page, "lenses-ed-phone")


def test_run_without_lens_results_says_so(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.other_run_id}")
    page.wait_for_selector("#lenses[data-loaded='true']", timeout=20_000)
    assert "No essential-dynamics result yet" in page.inner_text("#lenses-status")
    assert "No progress measures yet" in page.inner_text("#progress-status")
