"""Judging an LLC estimate in the browser: verdict markers, the estimate panel (one trace
line per chain), the settings series, and applying a calibration setting."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.conftest import PHONE, shoot
from tests.browser.seed_trust import CHAINS, STEPS, seed_trust_run

pytestmark = pytest.mark.browser
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def trust_run(site) -> int:  # type: ignore[no-untyped-def]
    return seed_trust_run(site.db)


def _open(page, site, run_id: int, query: str = "") -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{site.url}/runs/{run_id}{query}")
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)


def _trace(page, plot: str, name: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """The plot's trace called ``name`` that holds points (not a legend-only entry)."""
    return page.evaluate(
        f"() => document.getElementById('{plot}').data"
        f".find(t => t.name === {name!r} && t.x.some(x => x !== null)) || null"
    )


def test_only_ok_estimates_are_the_line_the_others_are_hollow_or_no_estimate(
    site, page, trust_run
) -> None:
    """Steps 10 (negative) and 30 (left the basin) are hollow markers off the line; 300 (a
    diverged chain: the surviving chains' mean is no estimate) is an "x"; the line and the
    y range are the ok estimates' alone."""
    _open(page, site, trust_run)
    line = _trace(page, "plot-llc", "LLC")
    assert line["x"] == [100, 1000, 3000]
    flagged = _trace(page, "plot-llc", "LLC · not ok")
    assert flagged["x"] == [10, 30] and flagged["mode"] == "markers"
    assert all(sym.endswith("-open") for sym in flagged["marker"]["symbol"])
    verdicts = [c[1] for c in flagged["customdata"]]
    assert verdicts[0].startswith("negative") and verdicts[1].startswith("left the basin")
    none = _trace(page, "plot-llc", "LLC · no estimate")
    assert none["x"] == [300] and none["marker"]["symbol"] == "x"
    assert none["customdata"][0][1].startswith("diverged chains")
    assert "surviving chains alone" in none["customdata"][0][4]  # in the hover, not the plot
    # The y axis spans the ok estimates; "left the basin" (hundreds) sits on its top edge.
    lo, hi = page.evaluate("() => document.getElementById('plot-llc').layout.yaxis.range")
    ok_values = line["y"]
    assert lo <= min(ok_values) and hi >= max(ok_values) and hi < 2 * max(ok_values)
    assert flagged["y"][1] == hi and flagged["marker"]["symbol"][1] == "triangle-up-open"
    assert "%{customdata[5]" in flagged["hovertemplate"]  # its own value, in the hover only
    # Restricted small multiples follow the same rule, one shared y scale by default.
    unembed = _trace(page, "plot-restricted", "weights:unembed · not ok")
    assert unembed["x"] == [10, 30]
    embed = _trace(page, "plot-restricted", "weights:embed")
    assert embed["x"] == STEPS  # every embed estimate is ok
    layout = page.evaluate("() => document.getElementById('plot-restricted').layout")
    assert layout["yaxis2"]["matches"] == "y" and layout["yaxis"]["range"]
    # The settings series is named.
    assert "current" in page.inner_text("#llc-series-note")
    assert "lr 0.001" in page.inner_text("#c-llcs")


def test_clicking_an_llc_point_opens_one_trace_per_chain_and_the_url_keeps_it(
    site, page, trust_run, browser
) -> None:
    _open(page, site, trust_run)
    # Click the "no estimate" mark of the checkpoint with a diverged chain (step 300).
    page.evaluate(
        """() => {
          const el = document.getElementById('plot-llc');
          const i = el.data.findIndex(t => t.name === 'LLC · no estimate');
          const t = el.data[i];
          const k = t.x.indexOf(300);
          const point = {curveNumber: i, pointIndex: k, customdata: t.customdata[k]};
          el.emit('plotly_click', {points: [point]});
        }"""
    )
    page.wait_for_selector("#llc-diag #diag-traces .scatterlayer", timeout=10_000)
    lines = page.evaluate(
        "() => document.getElementById('diag-traces').data.filter(t => t.name.startsWith('chain'))"
    )
    assert len(lines) == CHAINS
    assert [t["line"].get("dash") for t in lines] == [None, None, "dot", None]  # diverged: dotted
    assert "(diverged)" in lines[2]["name"]
    panel = page.inner_text("#llc-diag").lower()  # table headers are upper-cased by CSS
    assert "diverged chains" in panel and "what to try" in panel and "n_beta" in panel
    assert "l(w*)" in panel and "localization" in panel
    shapes = page.evaluate("() => document.getElementById('diag-traces').layout.shapes.length")
    assert shapes == 1  # the L(w*) line
    assert page.locator("#diag-distance .scatterlayer .trace").count() == CHAINS
    assert page.locator("#diag-grad .scatterlayer .trace").count() == CHAINS
    query = parse_qs(urlsplit(page.url).query)
    result_id = query["llc_result"][0]
    shoot(page, "llc-panel-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(400)
    page.locator("#llc-diag").screenshot(path="tests/browser/artifacts/llc-panel-phone.png")
    # The address alone reopens the panel in a fresh browser.
    fresh = browser.new_context()
    other = fresh.new_page()
    try:
        _open(other, site, trust_run, f"?llc_result={result_id}")
        other.wait_for_selector("#llc-diag #diag-traces .scatterlayer", timeout=10_000)
        assert "step 300" in other.inner_text("#llc-diag h2")
    finally:
        fresh.close()


def test_a_checkpoint_row_opens_its_estimate(site, page, trust_run) -> None:
    _open(page, site, trust_run)
    row = page.locator(f"#checkpoints tr[data-step='{STEPS[1]}'] [data-llc-result]")
    assert "⚠" in row.inner_text()
    row.click()
    page.wait_for_selector("#llc-diag #diag-traces .scatterlayer", timeout=10_000)
    assert "left the basin" in page.inner_text("#llc-diag .verdict-line")
    page.click("#llc-diag .diag-close")
    assert "llc_result" not in page.url


def test_calibration_heatmap_applies_a_setting_to_the_run(site, page, trust_run) -> None:
    _open(page, site, trust_run)
    page.wait_for_selector("#calibration[data-state='done'] #cal-heatmap .heatmaplayer")
    assert "recommended" in page.inner_text("#cal-status")
    # Recommended cell preselected; its traces (one per calibrated checkpoint) are drawn.
    assert page.get_attribute("#calibration", "data-selected") == "0.0003,10"
    assert page.locator("#cal-traces .scatterlayer .trace").count() == 2 * 4
    # Non-ok cells are outlined (lr 1e-3 x gamma 10 diverged, lr 1e-4 x 3 not converged),
    # the recommended one framed green: 5 shapes.
    assert page.evaluate("() => document.getElementById('cal-heatmap').layout.shapes.length") == 5
    shoot(page, "calibration-desktop")
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_function("localStorage.getItem('pb-token') === 's3cret'")
    page.click("#cal-use")
    page.wait_for_selector("#calibration[data-applied]")
    # llc and llc_restricted (the run has restricted results) on its 6 checkpoints.
    assert "12 LLC jobs queued" in page.inner_text("#toast")
    run = httpx.get(f"{site.url}/api/runs/{trust_run}").json()
    assert run["analysis_config"]["llc"] == {"lr": 3e-4, "localization": 10.0}
    # The old estimates are kept: the picker now lists two settings, shown: the old ones
    # until the new jobs finish.
    page.wait_for_function("document.querySelectorAll('#c-llcs option').length === 2")
    assert "older settings" in page.inner_text("#llc-series-note")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(400)
    page.locator("#calibration").screenshot(path="tests/browser/artifacts/calibration-phone.png")
