"""The lens views on the run page, in a real Chromium against a real server.

Rows are written as the lens jobs would have written them (pages only read rows).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from phaseboard.server.models import Checkpoint, PhaseBoundary, Result, Run
from phaseboard.server.settings import Settings
from phaseboard.server.storage import BlobStore
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


def _seed_learning_order(site, run_id: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    """60 examples learned around steps 10^1.5 .. 10^3.5 (a noisy order per ``seed``)."""
    home = Path(site.db.engine.url.database).parent
    store = BlobStore(Settings(home=home).storage_dir)
    rng = np.random.default_rng(seed)
    steps = [int(10 ** (1 + 3 * i / 19)) for i in range(20)]
    x = np.log10(steps)[:, None]
    centre = np.linspace(1.5, 3.5, 60) + rng.normal(0, 0.3, 60)  # learned-at, log10
    losses = 4.0 / (1 + np.exp(6 * (x - centre[None, :]))) + 0.01  # (checkpoints, examples)
    learned = [float(10**c) if c < 4 else None for c in centre]
    order = sorted(range(60), key=lambda i: centre[i])
    buf = io.BytesIO()
    np.save(buf, losses.astype(np.float16))
    with site.db.session() as s:
        s.add(
            Result(
                run_id=run_id,
                kind="learning_order",
                values={
                    "steps": steps,
                    "split": "train",
                    "n_examples": 60,
                    "threshold": 0.4,
                    "learned_at": learned,
                    "order": order,
                    "n_learned": sum(v is not None for v in learned),
                    "losses_blob": store.put_bytes(buf.getvalue()),
                },
            )
        )


def test_run_page_shows_the_essential_dynamics_path_with_boundaries(site, page) -> None:
    _seed_essential_dynamics(site)
    _seed_learning_order(site, site.seeded.run_id, seed=0)
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
    progress = page.evaluate("() => document.getElementById('plot-progress').data.map(t => t.meta)")
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
    # Learning order: histogram with boundaries, heatmap sorted by learned-at.
    page.wait_for_function("document.getElementById('plot-order-heatmap').data !== undefined")
    assert "60 of 60 train examples learned" in page.inner_text("#order-status")
    bars = page.evaluate("() => document.getElementById('plot-learned').data[0].y")
    assert sum(bars) == 60
    heat = page.evaluate("() => document.getElementById('plot-order-heatmap').data[0].z.length")
    assert heat == 60
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
    assert "No learning-order result yet" in page.inner_text("#order-status")


def test_compare_page_shows_learning_order_agreement_of_the_runs(site, page) -> None:
    """Two runs of the same task config: rho and n; a run on other data: skipped."""
    with site.db.session() as s:
        twin = Run(
            name="grokking-p53-seed1", task="modular_addition", task_config={"p": 53, "seed": 0}
        )
        s.add(twin)
        s.flush()
        twin_id = twin.id
    _seed_learning_order(site, site.seeded.run_id, seed=0)
    _seed_learning_order(site, twin_id, seed=1)
    _seed_learning_order(site, site.seeded.other_run_id, seed=2)
    ids = f"{site.seeded.run_id},{twin_id},{site.seeded.other_run_id}"
    page.goto(f"{site.url}/compare?runs={ids}")
    page.wait_for_selector("#lo-compare[data-loaded='true']", timeout=20_000)
    rows = page.locator("#lo-table tbody tr").all_inner_texts()
    assert len(rows) == 3
    twin_row = next(r for r in rows if "grokking-p53-seed1" in r and "grokking-p53\t" in r)
    rho = float(twin_row.split("\t")[2])
    assert 0.5 < rho <= 1.0 and "60 of 60" in twin_row  # same order up to noise 0.3 decades
    assert sum("different probe examples" in r for r in rows) == 2
    page.locator("#lo-compare").scroll_into_view_if_needed()
    shoot(page, "lenses-compare-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    shoot(page, "lenses-compare-phone")


def test_boundary_source_filter_shows_one_source_or_agreement_and_lives_in_the_url(
    site, page
) -> None:
    """Seeded: 380 llc, 410 essential_dynamics+llc (added above), 2900 loss:test_loss."""
    with site.db.session() as s:
        if not s.scalar(sa.select(PhaseBoundary.id).where(PhaseBoundary.source.contains("+"))):
            _seed_essential_dynamics(site)
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
    page.wait_for_selector("#lenses[data-loaded='true']", timeout=20_000)

    find = "document.getElementById('{}').data.find(t => t.name === 'phase boundaries')"

    def phase_steps(plot: str) -> list[float]:
        return page.evaluate(f"() => ({find.format(plot)} || {{x: []}}).x")

    assert phase_steps("plot-llc") == [380, 410, 2900]
    page.select_option("#c-bsrc", "llc")
    assert "bsrc=llc" in page.url
    page.wait_for_function(find.format("plot-llc") + ".x.length === 2")
    assert phase_steps("plot-llc") == [380, 410]
    page.select_option("#c-bsrc", "agreed")
    page.wait_for_function(find.format("plot-llc") + ".x.length === 1")
    assert phase_steps("plot-llc") == [410] and len(phase_steps("plot-ed12")) == 1  # x: PC1
    # The address is the view: opened fresh, the filter is still on.
    page.goto(page.url)
    page.wait_for_selector("#lenses[data-loaded='true']", timeout=20_000)
    assert page.input_value("#c-bsrc") == "agreed"
    hover = page.evaluate(f"() => {find.format('plot-ed12')}.hovertemplate.join('|')")
    assert "step 410" in hover and "step 380" not in hover
