"""Runs table as a sweep user sees it (columns picker, filter, sort, group, parallel
coordinates, status) and the time x-axes of the run page, in Chromium against a real server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.conftest import PHONE, shoot
from tests.live_server import serve

pytestmark = pytest.mark.browser

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Six runs of a learning-rate sweep with config, summary, wall times and statuses."""
    with serve(tmp_path_factory.mktemp("sweep")) as url:
        api = httpx.Client(base_url=url + "/api", timeout=30)
        ids = {}
        t0 = time.time() - 3 * 3600
        for i, lr in enumerate(LRS):
            opt = "adamw" if i % 2 else "sgd"
            body = {
                "name": f"lr-{lr:g}",
                "config": {"lr": lr, "optimizer": opt, "width": 64 * (1 + i % 3)},
            }
            rid = api.post("/runs", json=body).json()["id"]
            ids[lr] = rid
            points = []
            for step in range(0, 200, 5):
                loss = 2.0 / (1 + step * lr * 50) + 0.01 * i
                wall = t0 + step * 30 * (1 + i / 5)
                points += [
                    {"name": "train/loss", "step": step, "value": loss, "wall_time": wall},
                    {"name": "test_loss", "step": step, "value": loss * 1.1, "wall_time": wall},
                    {"name": "tokens", "step": step, "value": step * 4096.0, "wall_time": wall},
                ]
            assert api.post(f"/runs/{rid}/metrics", json=points).status_code == 200
            if i < 4:
                api.post(
                    f"/runs/{rid}/finish", json={"status": "finished" if i != 2 else "crashed"}
                )
            else:
                api.post(f"/runs/{rid}/heartbeat")
        yield {"url": url, "ids": ids}
        api.close()


def _q(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _names(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator("#runs-table tbody tr td:nth-child(2)").all_inner_texts()


def test_columns_picker_sort_and_filter_live_in_the_url(sweep, page) -> None:
    page.goto(sweep["url"] + "/")
    assert len(_names(page)) == 6
    assert page.locator("#runs-table .pill.status-crashed").count() == 1
    page.click("#columns-picker summary")
    page.check("#columns-picker input[value='config.lr']")
    page.wait_for_url(re.compile(r"cols=config\.lr"))
    page.check("#columns-picker input[value='summary.test_loss.min']")
    page.wait_for_url(re.compile(r"cols=config\.lr%2Csummary\.test_loss\.min"))
    page.wait_for_selector("#runs-table th:has-text('summary.test_loss.min')")
    page.click("#columns-picker summary")  # close the picker
    page.click("#runs-table th a:has-text('config.lr')")  # sort ascending by lr
    page.wait_for_url(re.compile(r"sort=config\.lr"))
    assert _names(page) == [f"lr-{lr:g}" for lr in LRS]
    page.click("#runs-table th a:has-text('config.lr')")  # and descending
    page.wait_for_url(re.compile(r"sort=-config\.lr"))
    assert _names(page) == [f"lr-{lr:g}" for lr in reversed(LRS)]
    page.fill("#filter", "config.lr < 1e-3 and summary.test_loss.min < 1.5")
    page.press("#filter", "Enter")
    page.wait_for_url(re.compile(r"filter=config"))
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length === 2")
    assert sorted(_names(page)) == ["lr-0.0001", "lr-0.0003"]
    shoot(page, "tracker-runs-columns-desktop")
    # The address is the view.
    page.goto(page.url)
    assert sorted(_names(page)) == ["lr-0.0001", "lr-0.0003"]
    assert _q(page.url)["cols"] == "config.lr,summary.test_loss.min"
    page.fill("#filter", "config.lr <")
    page.press("#filter", "Enter")
    page.wait_for_selector("#runs-table .form-error")
    assert "Filter not applied" in page.inner_text("#runs-table")


def test_status_filter_and_group_by_config_key(sweep, page) -> None:
    page.goto(sweep["url"] + "/")
    page.select_option("#status", "crashed")
    page.wait_for_url(re.compile(r"status=crashed"))
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length === 1")
    assert _names(page) == ["lr-0.001"]
    page.select_option("#status", "")
    page.select_option("#group", "config.optimizer")
    page.wait_for_selector("#runs-table .groups")
    groups = page.inner_text("#runs-table .groups")
    assert "adamw 3" in groups and "sgd 3" in groups


def test_parallel_coordinates_of_the_selected_runs(sweep, page) -> None:
    cols = "config.lr,config.width,summary.test_loss.min"
    page.goto(f"{sweep['url']}/?cols={cols}&sort=config.lr")
    page.check("#runs-table tbody tr:nth-child(1) input[name=pick]")
    page.check("#runs-table tbody tr:nth-child(3) input[name=pick]")
    page.check("#runs-table tbody tr:nth-child(5) input[name=pick]")
    page.click("#parcoords-btn")
    page.wait_for_selector("#parcoords .parcoords", timeout=20_000)
    n = page.evaluate("document.getElementById('parcoords').data[0].dimensions[0].values.length")
    assert n == 3
    labels = page.evaluate(
        "document.getElementById('parcoords').data[0].dimensions.map((d) => d.label)"
    )
    assert labels == ["log10 config.lr", "config.width", "summary.test_loss.min"]
    shoot(page, "tracker-parcoords-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    shoot(page, "tracker-runs-phone")


@pytest.mark.parametrize("x", ["rel", "wall", "series:tokens"])
def test_time_and_series_x_axes_are_in_the_url(sweep, page, x: str) -> None:
    rid = sweep["ids"][1e-3]
    page.goto(f"{sweep['url']}/runs/{rid}?series=train/loss,test_loss")
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
    page.select_option("#c-x", x)
    page.wait_for_url(re.compile("x=" + re.escape(x.replace(":", "%3A").replace("/", "%2F"))))
    layout = page.evaluate("document.getElementById('plot-loss').layout.xaxis")
    title = layout["title"]["text"]  # the x axis says what x is
    xs = page.evaluate("document.getElementById('plot-loss').data[0].x")
    if x == "wall":
        assert layout["type"] == "date" and str(xs[0]).startswith("20")
        assert title == "wall-clock time"
    elif x == "rel":
        assert title == "hours since start" and xs[0] == 0
        assert max(v for v in xs if v is not None) > 2  # 195 steps * 30 s * 1.4 -> 2.3 h
    else:
        assert title == "tokens" and xs[1] == 5 * 4096
    if x == "rel":
        shoot(page, "tracker-xaxis-rel-desktop")
        page.set_viewport_size(PHONE)
        page.reload()
        page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
        assert page.input_value("#c-x") == "rel"
        shoot(page, "tracker-xaxis-rel-phone")
