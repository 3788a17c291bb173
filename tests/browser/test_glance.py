"""The run page at a glance: axes, stages, restricted small multiples, running jobs, compare
warnings and phone layout, on the seeded run in a real Chromium."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.browser.conftest import PHONE, shoot

pytestmark = pytest.mark.browser


def _wait_plots(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)


def _layout(page, plot: str, expr: str):  # type: ignore[no-untyped-def]
    return page.evaluate(f"document.getElementById('plot-{plot}').layout.{expr}")


def test_loss_is_log_accuracy_has_its_own_axis_and_x_axes_are_titled(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}?x=step")
    _wait_plots(page)
    assert _layout(page, "loss", "yaxis.type") == "log"
    assert _layout(page, "loss", "xaxis.title.text") == "step"
    assert _layout(page, "metrics", "yaxis2.range") == [0, 1.02]
    on_y2 = page.evaluate(
        "document.getElementById('plot-metrics').data.filter(t => t.yaxis === 'y2')"
        ".map(t => t.name)"
    )
    assert on_y2 == ["accuracy"]  # shown by default, on the 0-1 axis
    # Series picker: logged vs computed from checkpoints, without the bare ckpt/ prefix.
    groups = page.locator(".series-group-title").all_text_contents()
    assert groups == ["Logged during training", "Computed from checkpoints"]
    ckpt_row = page.locator(".series-group").nth(1).inner_text()
    assert "train_loss" in ckpt_row and "ckpt/" not in ckpt_row
    page.select_option("#c-x", "log")  # the default for these log-spaced checkpoints
    page.wait_for_function("!location.search.includes('x=')")
    assert _layout(page, "llc", "xaxis.title.text") == "step (log scale)"


def test_stage_labels_sit_between_boundaries_user_labels_first(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}?x=log")
    _wait_plots(page)
    for plot in ("loss", "llc", "metrics"):
        labels = page.evaluate(
            f"document.getElementById('plot-{plot}').layout.annotations"
            ".filter(a => a.name === 'stage-label').map(a => a.text)"
        )
        # Boundaries at 380 ("memorisation", typed by a user) and 2900 (no label).
        assert labels == ["stage 1", "memorisation", "stage 3"], plot
        assert page.locator(f"#plot-{plot} .annotation-text", has_text="stage 3").count() == 1
    # On a linear axis the first stage (steps 0-380 of 10^4) is too narrow for its name: it
    # keeps its number, and the full name and step range on hover.
    page.select_option("#c-x", "step")
    page.wait_for_function(
        "document.getElementById('plot-llc').layout.annotations"
        ".filter(a => a.name === 'stage-label')[0].text === '1'"
    )
    first = page.evaluate(
        "document.getElementById('plot-llc').layout.annotations"
        ".filter(a => a.name === 'stage-label').map(a => [a.text, a.hovertext])"
    )
    assert [t for t, _ in first] == ["1", "memorisation", "stage 3"]
    assert first[0][1] == "stage 1: steps 0–380"
    # On a phone the user's label no longer fits its stage (clipped) and stage 1 has no
    # room even for its number: nothing runs into anything.
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(600)  # the resize redraw is debounced by 200 ms
    labels = page.evaluate(
        "document.getElementById('plot-llc').layout.annotations"
        ".filter(a => a.name === 'stage-label').map(a => a.text)"
    )
    assert labels == ["mem…", "stage 3"]


def test_restricted_small_multiples_toggle_independent_and_normalised_y(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    _wait_plots(page)
    assert _layout(page, "restricted", "yaxis2.matches") == "y"  # one shared scale by default
    page.select_option("#c-ry", "indep")
    page.wait_for_url(re.compile(r"ry=indep"))
    assert _layout(page, "restricted", "yaxis2.matches") is None
    ranges = {str(_layout(page, "restricted", f"yaxis{k}.range")) for k in ("", "2", "3", "4")}
    assert len(ranges) == 4  # each head on its own scale (the seeded means differ by +h)
    shapes = _layout(page, "restricted", "shapes.length")
    assert shapes >= 4 * 2  # both boundaries drawn in each of the four panels
    page.select_option("#c-ry", "norm")
    page.wait_for_url(re.compile(r"ry=norm"))
    assert _layout(page, "restricted", "yaxis2.matches") == "y"
    peak = page.evaluate(
        "Math.max(...document.getElementById('plot-restricted').data"
        ".filter(t => t.meta === 'llc-ok').flatMap(t => t.y))"
    )
    assert peak == pytest.approx(1.0)
    page.goto(page.url)
    _wait_plots(page)
    assert page.input_value("#c-ry") == "norm"
    # Overlay: one colour per restriction, none repeated.
    page.select_option("#c-restricted", "overlay")
    colors = page.evaluate("document.getElementById('plot-restricted').data.map(t => t.line.color)")
    assert len(colors) == 4 and len(set(colors)) == 4


def test_cards_say_what_is_running_and_checkpoints_table_puts_llc_first(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    _wait_plots(page)
    note = page.inner_text("#jobs-note-llc")
    assert "llc jobs: 1 running (40 %)" in note
    headers = page.locator("#checkpoints thead th").all_text_contents()
    assert headers[:4] == ["Step", "Size", "Status", "LLC"]
    failed = page.locator("#checkpoints tr .job-failed")
    assert failed.count() == 1 and failed.inner_text() == "llc failed"
    assert "CheckpointMismatch" in (failed.get_attribute("title") or "")
    shoot(page, "glance-run-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(400)
    shoot(page, "glance-run-phone")


def test_plot_toolbar_stays_above_the_plot_area_and_its_markers(site, page) -> None:
    page.goto(f"{site.url}/runs/{site.seeded.run_id}")
    _wait_plots(page)
    for viewport in (None, PHONE):
        if viewport:
            page.set_viewport_size(viewport)
            page.wait_for_timeout(500)
        page.hover("#plot-loss")
        bar = page.locator("#plot-loss .modebar").bounding_box()
        area = page.locator("#plot-loss .bglayer .bg").first.bounding_box()
        assert bar is not None and area is not None
        assert bar["y"] + bar["height"] <= area["y"] + 1, (bar, area)


def test_compare_warns_about_different_configs_and_the_legend_does_not_squash(site, page) -> None:
    a, b = site.seeded.run_id, site.seeded.other_run_id
    page.goto(f"{site.url}/compare?runs={a},{b}")
    _wait_plots(page)
    warning = page.locator(".compare-warning")
    assert warning.count() == 1 and "Different tasks" in warning.inner_text()
    assert warning.is_visible()
    height = page.evaluate("document.getElementById('plot-loss').layout.height")
    margin_b = page.evaluate("document.getElementById('plot-loss').layout.margin.b")
    assert height - margin_b >= 300 - 40  # the plot area keeps its size; the legend adds
    shoot(page, "glance-compare-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(400)
    shoot(page, "glance-compare-phone")


def test_share_page_on_a_phone_has_no_sideways_scroll(site, page) -> None:
    view = f"/runs/{site.seeded.run_id}?x=log&smooth=0.5&series=" + ",".join(
        ["train_loss", "test_loss", "accuracy"] * 6
    )
    resp = httpx.post(
        site.url + "/api/shares",
        json={"view": view},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert resp.status_code in (200, 201), resp.text
    page.set_viewport_size(PHONE)
    page.goto(resp.json()["url"])
    _wait_plots(page)
    wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert wide <= 0, f"page is {wide}px wider than the phone"
    shoot(page, "glance-share-phone")
