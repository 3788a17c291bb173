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


def test_non_ok_llc_points_are_hollow_and_say_their_verdict(site, page, trust_run) -> None:
    _open(page, site, trust_run)
    llc = page.evaluate(
        "() => document.getElementById('plot-llc').data.find(t => t.name === 'LLC')"
    )
    symbols = llc["marker"]["symbol"]
    assert symbols == ["circle-open", "circle-open", "circle", "circle-open", "circle", "circle"]
    verdicts = [c[1] for c in llc["customdata"]]
    assert verdicts[1].startswith("left the basin") and verdicts[3].startswith("diverged chains")
    assert "n_beta" in llc["hovertemplate"]
    # Restricted small multiples carry the same marks.
    unembed = page.evaluate(
        "() => document.getElementById('plot-restricted').data"
        ".find(t => t.name === 'weights:unembed' && t.marker && t.marker.symbol)"
    )
    assert unembed["marker"]["symbol"][1] == "circle-open"
    # The settings series is named.
    assert "current" in page.inner_text("#llc-series-note")
    assert "lr 0.001" in page.inner_text("#c-llcs")


def test_clicking_an_llc_point_opens_one_trace_per_chain_and_the_url_keeps_it(
    site, page, trust_run, browser
) -> None:
    _open(page, site, trust_run)
    # Click the point of the checkpoint with a diverged chain (step 300).
    page.evaluate(
        """() => {
          const el = document.getElementById('plot-llc');
          const i = el.data.findIndex(t => t.name === 'LLC');
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
