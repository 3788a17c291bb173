"""The dashboard as a person uses it, in a real Chromium against a real server."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.conftest import DESKTOP, PHONE, shoot

pytestmark = pytest.mark.browser
TOKEN = "s3cret"


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _wait_plots(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)


def _save_token(page) -> None:  # type: ignore[no-untyped-def]
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_function("() => localStorage.getItem('pb-token') === 's3cret'")


def test_runs_list_searches_with_htmx_and_keeps_the_filter_in_the_url(site, page) -> None:
    page.goto(site.url + "/")
    rows = page.locator("#runs-table tbody tr")
    assert rows.count() == 2
    assert "grokking-p53" in page.inner_text("#runs-table")
    shoot(page, "runs-desktop")
    page.fill("#q", "grok")
    page.wait_for_url(re.compile(r"\?.*q=grok"))
    page.wait_for_function("() => document.querySelectorAll('#runs-table tbody tr').length === 1")
    assert "tms-5-2" not in page.inner_text("#runs-table")
    page.select_option("#tag", "grokking")
    page.wait_for_url(re.compile(r"tag=grokking"))
    page.set_viewport_size(PHONE)
    shoot(page, "runs-phone")
    # The address is the view: opening it fresh shows the same filtered list.
    page.goto(page.url)
    assert page.locator("#runs-table tbody tr").count() == 1
    assert page.input_value("#q") == "grok"


def test_run_page_draws_traces_and_phase_lines(site, page) -> None:
    run_id = site.seeded.run_id
    page.goto(f"{site.url}/runs/{run_id}")
    _wait_plots(page)
    # Loss: train/test logged series (+ checkpoint metrics) and the boundary hover trace.
    assert page.locator("#plot-loss .scatterlayer .trace").count() >= 3
    assert page.locator("#plot-llc .scatterlayer .trace").count() >= 2  # band + mean
    for plot in ("loss", "llc", "metrics"):
        # Two boundaries -> two dashed lines (+ one shaded stage) in every plot.
        assert page.locator(f"#plot-{plot} .shapelayer path").count() >= 2, plot
    assert "phase boundaries" in (page.locator("#plot-loss .legend").text_content() or "")
    # Restricted LLCs: one small multiple per head.
    titles = page.locator("#plot-restricted .annotation-text").all_text_contents()
    assert [t for t in titles if "head" in t] == [f"blocks.0.attn.head{h}" for h in range(4)]
    # Boundary hover text carries step, source and score.
    hover = page.evaluate(
        "() => document.getElementById('plot-llc').data.find(t => t.name === 'phase boundaries')"
        ".hovertemplate.join('|')"
    )
    assert "step 380" in hover and "source llc" in hover and "score 2.5" in hover
    # The header, checkpoints table and jobs panel come from rows.
    assert "modular_addition" in page.inner_text("#run-header")
    assert page.locator("#checkpoints tbody tr").count() == 20
    assert "1 running" in page.inner_text("#jobs")
    assert "chain draws 80/200" in page.inner_text("#jobs")
    assert "CheckpointMismatch" in page.inner_text("#jobs")
    shoot(page, "run-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(400)
    shoot(page, "run-phone")


def test_jobs_panel_polls_until_jobs_finish(site, page) -> None:
    from tests.browser.seed import finish_running_jobs

    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    _wait_plots(page)
    assert page.get_attribute("#jobs", "hx-trigger") == "every 2s"
    finish_running_jobs(site.db)
    page.wait_for_function(
        "() => document.getElementById('jobs').dataset.active === '0'", timeout=10_000
    )
    assert "running" not in page.inner_text("#jobs .job-counts")
    assert page.get_attribute("#jobs", "hx-trigger") is None  # polling stopped


def test_axis_smoothing_and_zoom_live_in_the_url(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    _wait_plots(page)
    # Log-spaced checkpoints: log step is the default x (not written to the address).
    assert page.input_value("#c-x") == "log" and "x=" not in page.url
    assert page.evaluate("document.getElementById('plot-loss').layout.xaxis.type") == "log"
    assert page.is_checked("#c-ylog")  # loss on a log y-axis is the default
    page.uncheck("#c-ylog")
    page.wait_for_url(re.compile(r"ylog=0"))
    page.eval_on_selector(
        "#c-smooth",
        "el => { el.value = '0.8'; el.dispatchEvent(new Event('input')); "
        "el.dispatchEvent(new Event('change')); }",
    )
    page.wait_for_url(re.compile(r"smooth=0.8"))
    assert page.inner_text("#c-smooth-out") == "0.80"
    raw = page.evaluate(
        "document.getElementById('plot-loss').data.filter(t => /\\(raw\\)/.test(t.name)).length"
    )
    assert raw >= 1  # smoothing keeps the raw curve faintly behind the smoothed one
    page.uncheck("#series-0")  # "accuracy" leaves the metrics plot
    page.wait_for_url(re.compile(r"series="))
    page.evaluate(
        "Plotly.relayout('plot-llc', {'xaxis.range[0]': 1, 'xaxis.range[1]': 3})"
    )  # log axis: 10..1000
    page.wait_for_url(re.compile(r"xmax=1000"))
    state = _query(page.url)
    assert "x" not in state and state["smooth"] == "0.8" and state["xmin"] == "10"
    assert "accuracy" not in state["series"].split(",")
    # Zooming one plot zooms them all.
    loss_range = page.evaluate("document.getElementById('plot-loss').layout.xaxis.range")
    assert [round(v, 3) for v in loss_range] == [1.0, 3.0]
    # Reopening the address restores the view.
    page.goto(page.url)
    _wait_plots(page)
    assert page.input_value("#c-x") == "log"
    assert not page.is_checked("#c-ylog")
    assert page.input_value("#c-smooth") == "0.8"
    assert not page.is_checked("#series-0")
    assert page.evaluate("document.getElementById('plot-loss').layout.yaxis.type") == "linear"
    assert page.evaluate("document.getElementById('plot-llc').layout.xaxis.autorange") is False


def test_share_link_opens_read_only_in_a_fresh_context(site, page, browser) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}?x=log&smooth=0.5")
    _wait_plots(page)
    _save_token(page)
    page.click("#c-share")
    page.wait_for_selector("#share-result:not([hidden])")
    url = page.input_value("#share-url")
    assert re.fullmatch(re.escape(site.url) + r"/s/[A-Za-z0-9_-]{6,16}", url)

    fresh = browser.new_context(viewport=DESKTOP)  # no token, no history
    try:
        other = fresh.new_page()
        other.goto(url)
        other.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
        assert "Shared view" in other.inner_text(".banner")
        assert other.evaluate("document.getElementById('plot-loss').layout.xaxis.type") == "log"
        assert other.input_value("#c-smooth") == "0.5"
        assert other.locator("#upload").count() == 0
        assert other.locator("text=Edit details").count() == 0
        assert other.locator("#phase-add").count() == 0
        shoot(other, "share-desktop")
    finally:
        fresh.close()


def test_manual_boundaries_are_added_renamed_and_deleted(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    _wait_plots(page)
    # Without the token the API refuses, and the page says so.
    page.fill("#p-step", "1500")
    page.fill("#p-label", "circuit formation")
    page.click("#phase-add button[type=submit]")
    page.wait_for_selector("#phase-error:has-text('Bearer')")
    _save_token(page)
    page.click("#phase-add button[type=submit]")
    page.wait_for_selector("#phase-list li:has-text('step 1500')")
    assert "manual" in page.inner_text("#phase-list li:has-text('step 1500')")
    lines = page.locator("#plot-loss .shapelayer path").count()
    assert lines >= 3
    item = page.locator("#phase-list li:has-text('step 1500')")
    item.locator("input").fill("cleanup")
    item.locator("button:has-text('Rename')").click()
    page.wait_for_function(
        "() => document.getElementById('plot-llc').data.some(t => t.name === 'phase boundaries' && "
        "t.hovertemplate.some(h => h.includes('cleanup')))"
    )
    rows = httpx.get(f"{site.url}/api/runs/{site.seeded.run_id}/phases").json()
    assert any(r["label"] == "cleanup" and r["manual"] for r in rows)
    page.locator("#phase-list li:has-text('step 1500') button:has-text('Delete')").click()
    page.wait_for_selector("#phase-list li:has-text('step 1500')", state="detached")


def test_compare_overlays_runs_and_keeps_them_in_the_url(site, page) -> None:
    a, b = site.seeded.run_id, site.seeded.other_run_id
    page.goto(site.url + "/")
    page.check(f"#runs-table input[value='{a}']")
    page.check(f"#runs-table input[value='{b}']")
    page.click("#runs-table button:has-text('Compare selected')")
    page.wait_for_url(re.compile(rf"/compare\?runs={a},{b}"))
    _wait_plots(page)
    names = page.evaluate("document.getElementById('plot-llc').data.map(t => t.name)")
    assert "grokking-p53 · LLC" in names
    page.select_option("#c-x", "step")  # log step is the default for these checkpoints
    page.wait_for_url(re.compile(rf"runs={a},{b}.*x=step|x=step.*runs={a},{b}"))
    shoot(page, "compare-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    shoot(page, "compare-phone")


def _dln_checkpoint(path: Path, config: dict) -> Path:
    from safetensors.torch import save_file

    from phaseboard.analysis.tasks import get_task

    model = get_task("dln", config).build_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def local_site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A server with the in-process worker pool (PHASEBOARD_QUEUE=local)."""
    from tests.browser.conftest import _site

    yield from _site(tmp_path_factory, queue="local")


def test_upload_through_the_form_then_watch_the_job_finish(local_site, page, tmp_path) -> None:
    config = {"widths": [4, 4, 4], "true_rank": 2, "num_samples": 128, "num_test": 64}
    resp = httpx.post(
        local_site.url + "/api/runs",
        json={
            "name": "dln-upload",
            "task": "dln",
            "task_config": config,
            "analysis_config": {
                "analyses": ["metrics", "llc"],
                # Settings of its own: no calibration first (that waits for the run to settle).
                "llc": {"num_chains": 2, "num_draws": 20, "batch_size": 32, "lr": 1e-3},
            },
        },
    )
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]
    good = _dln_checkpoint(tmp_path / "step_100.safetensors", config)
    bad = tmp_path / "checkpoint-200.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    nameless = tmp_path / "weights.safetensors"
    nameless.write_bytes(good.read_bytes())

    page.goto(f"{local_site.url}/runs/{run_id}")
    _wait_plots(page)
    page.set_input_files("#upload-files", [str(good), str(bad), str(nameless)])
    good_item = page.locator(".upload-item:has-text('step_100.safetensors')")
    good_item.locator(".upload-msg:has-text('uploaded')").wait_for(timeout=20_000)
    assert good_item.locator("progress").get_attribute("value") == "1"
    bad_item = page.locator(".upload-item:has-text('checkpoint-200.safetensors')")
    bad_item.locator(".upload-msg").filter(has_not_text="uploading").wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.upload-item.error .upload-msg')].length >= 2"
    )
    assert "step" in page.inner_text(".upload-item:has-text('weights.safetensors') .upload-msg")
    bad_msg = bad_item.locator(".upload-msg").inner_text()
    assert bad_msg and "200" not in bad_msg.split(" ")[0]  # the API's detail, not a status line
    page.wait_for_selector("#checkpoints tbody tr[data-step='100']", timeout=20_000)
    # The jobs panel polls on its own while the worker runs metrics and LLC.
    page.wait_for_function(
        "() => { const j = document.getElementById('jobs');"
        " return j && j.dataset.active === '0' && Number(j.dataset.done) >= 2; }",
        timeout=120_000,
    )
    assert "failed" not in page.inner_text("#jobs .job-counts")
    # Finished jobs refresh the plots and the table without a reload.
    page.wait_for_function(
        "() => document.getElementById('plot-llc').data &&"
        " document.getElementById('plot-llc').data.some(t => String(t.meta).startsWith('llc-'))",
        timeout=20_000,
    )
    shoot(page, "upload-desktop")


def test_header_is_edited_in_place_with_htmx(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.other_run_id}")
    _wait_plots(page)
    _save_token(page)
    page.click("text=Edit details")
    page.wait_for_selector("#f-notes")
    page.fill("#f-notes", "k-gon transition at step 2k")
    page.fill("#f-tags", "tms, superposition")
    page.fill("#f-config", "[not an object]")
    page.click("#run-header button[type=submit]")
    page.wait_for_selector("[data-form-error]:has-text('task config')")
    page.fill("#f-config", '{"n": 5, "m": 2}')
    page.click("#run-header button[type=submit]")
    page.wait_for_selector("#run-header .notes:has-text('k-gon transition')")
    assert "superposition" in page.inner_text("#run-header")
    assert page.url.endswith(f"/runs/{site.seeded.other_run_id}")  # no reload, same address
    run = httpx.get(f"{site.url}/api/runs/{site.seeded.other_run_id}").json()
    assert run["task_config"] == {"n": 5, "m": 2} and run["tags"] == ["tms", "superposition"]


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_each_plot_downloads_as_an_image(site, page, fmt) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    _wait_plots(page)
    with page.expect_download() as info:
        page.click(f"#card-llc button[data-download='{fmt}']")
    download = info.value
    assert download.suggested_filename == f"grokking-p53-llc.{fmt}"
    path = download.path()
    head = Path(path).read_bytes()[:8]
    assert head.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in Path(path).read_bytes()[:200]
