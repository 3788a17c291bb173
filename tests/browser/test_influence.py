"""The influence and susceptibilities views in a real Chromium, on results real jobs made.

A local-queue server trains nothing: its runs' checkpoints are points on a path through
weight space (modular addition; a 1-layer attention-only LM for the token view), and the
two lenses run on them through the worker pool. The views' state (checkpoint, cell, test
example) lives in the URL, so a share link (``/s/{slug}``) shows the same view.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from phaseboard.server.db import Database
from phaseboard.server.models import Run
from phaseboard.server.settings import Settings
from phaseboard.server.storage import BlobStore
from tests.browser.conftest import PHONE, shoot
from tests.live_server import serve
from tests.server.jobs.conftest import add_checkpoints

pytestmark = pytest.mark.browser

LLC = {"num_chains": 3, "num_draws": 20, "batch_size": 32, "lr": 1e-4}
STEPS = [0, 10, 100, 1000]
MA = {"p": 11, "d_model": 16, "n_heads": 2, "d_mlp": 32, "train_fraction": 0.6}
LM = {
    "vocab": 12, "seq_len": 8, "span_min": 2, "span_max": 4, "d_model": 8, "n_layers": 1,
    "n_heads": 2, "num_samples": 64, "num_test": 16,
}  # fmt: skip


def _add_run(home: Path, task: str, config: dict[str, Any]) -> int:
    from phaseboard.analysis.tasks import get_task

    torch.manual_seed(0)
    base = get_task(task, config).build_model().state_dict()
    gen = torch.Generator().manual_seed(1)
    step_dir = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in base.items()}
    weights = [(s, {k: v + i * step_dir[k] for k, v in base.items()}) for i, s in enumerate(STEPS)]
    settings = Settings(home=home)
    db = Database(settings)
    try:
        with db.session() as s:
            run = Run(
                name=f"{task}-path", task=task, task_config=config,
                analysis_config={
                    "llc": LLC,
                    "influence": {"probe_examples": 8, "train_examples": 24, "top_k": 4},
                    "susceptibilities": {"reference_examples": 32, "observable_examples": 6},
                },
            )  # fmt: skip
            s.add(run)
            s.flush()
            add_checkpoints(s, BlobStore(settings.storage_dir), run.id, weights)
            return run.id
    finally:
        db.dispose()


def _wait_done(url: str, run_id: int, lenses: list[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = httpx.get(f"{url}/api/runs/{run_id}/lenses").json()["states"]
        if all(states[n]["state"] == "done" for n in lenses):
            return
        assert not any(states[n]["state"] == "failed" for n in lenses), states
        time.sleep(0.5)
    pytest.fail(f"lenses {lenses} not done: {states}")


@pytest.fixture(scope="module")
def lens_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("influence-site")
    with serve(home, queue="local") as url:
        ma = _add_run(home, "modular_addition", MA)
        lm = _add_run(home, "attention_lm", LM)
        for run_id in (ma, lm):
            body = {"lenses": ["influence", "susceptibilities"]}
            resp = httpx.post(f"{url}/api/runs/{run_id}/analyses", json=body)
            assert resp.status_code == 202, resp.text
        _wait_done(url, ma, ["influence", "susceptibilities"])
        _wait_done(url, lm, ["susceptibilities"])
        yield {"url": url, "ma": ma, "lm": lm}


def test_susceptibility_heatmap_follows_the_step_slider_and_shares_by_link(lens_site, page) -> None:  # type: ignore[no-untyped-def]
    url, run_id = lens_site["url"], lens_site["ma"]
    page.goto(f"{url}/runs/{run_id}")
    page.wait_for_selector("#plot-sus-heatmap .main-svg", timeout=30_000)
    heat = page.evaluate("() => document.getElementById('plot-sus-heatmap').data[0]")
    assert heat["x"] == ["a_even", "small_sums", "wrapped_sums", "test"]
    assert "l0.h0" in heat["y"] and len(heat["z"]) == len(heat["y"])
    assert "step 1000" in page.inner_text("#sus-step-label")
    # four checkpoints: four small multiples, the last one current
    assert page.locator(".sus-multiple").count() == 4
    assert "current" in page.locator(".sus-multiple").nth(3).get_attribute("class")
    # the slider picks another checkpoint: heatmap, title and URL follow
    page.locator("#sus-step").fill("1")
    page.wait_for_function("() => location.search.includes('sstep=10')")
    assert "at step 10" in page.inner_text("#sus-heatmap-title")
    # a small multiple is a button to its checkpoint
    page.locator(".sus-multiple").nth(2).click()
    page.wait_for_function("() => location.search.includes('sstep=100')")
    # the cell plot follows a click on a cell (URL scell); here set through the URL
    page.goto(f"{url}/runs/{run_id}?sstep=100&scell=l0.h1|test")
    page.wait_for_selector("#plot-sus-cell .main-svg", timeout=30_000)
    assert page.inner_text("#sus-cell-title") == "l0.h1 × test over training"
    shoot(page, "influence-susceptibilities-1280")
    # the share link replays the view state
    share = httpx.post(
        f"{url}/api/shares", json={"view": f"/runs/{run_id}?sstep=100&scell=l0.h1|test"}
    ).json()
    page.goto(share["url"])
    page.wait_for_selector("#plot-sus-cell .main-svg", timeout=30_000)
    assert "step 100" in page.inner_text("#sus-step-label")
    assert page.inner_text("#sus-cell-title") == "l0.h1 × test over training"
    # each small multiple on its own colour scale (URL sscale=own): the first checkpoint's
    # cells, near white on the shared scale, take colour
    first = (
        "() => [...document.querySelectorAll('.sus-multiple .mini')[0].children]"
        ".map(c => c.style.background)"
    )
    shared = page.evaluate(first)
    page.locator("#sus-own-scale").check()
    page.wait_for_function("() => location.search.includes('sscale=own')")
    assert page.evaluate(first) != shared
    assert "its own colour scale" in page.inner_text("#sus-multiples-note")


def test_influence_lists_most_and_least_influential_training_examples(lens_site, page) -> None:  # type: ignore[no-untyped-def]
    url, run_id = lens_site["url"], lens_site["ma"]
    page.goto(f"{url}/runs/{run_id}?iprobe=2&istep=100")
    page.wait_for_selector("#plot-inf-series .main-svg", timeout=30_000)
    assert page.locator("#inf-probe").input_value() == "2"
    assert "step 100" in page.inner_text("#inf-step-label")
    most = page.locator("#inf-most tbody tr")
    assert most.count() == 4
    first = most.nth(0).inner_text()
    assert " + " in first and " = " in first  # decoded "a + b = c"
    values = [
        float(page.locator("#inf-most tbody tr").nth(i).locator("td.num").inner_text().split()[0])
        for i in range(4)
    ]
    assert values == sorted(values, reverse=True)
    names = page.evaluate(
        "() => document.getElementById('plot-inf-series').data.map(t => t.name || '')"
    )
    lines = [n for n in names if n.startswith(("helps ", "least helpful "))]
    assert len(lines) == 8  # the four most and four least helpful examples over training
    page.select_option("#inf-probe", "5")
    page.wait_for_function("() => location.search.includes('iprobe=5')")
    shoot(page, "influence-influence-1280")


def test_token_task_shows_clusters_of_per_token_susceptibilities(lens_site, page) -> None:  # type: ignore[no-untyped-def]
    url, run_id = lens_site["url"], lens_site["lm"]
    page.goto(f"{url}/runs/{run_id}")
    page.wait_for_selector("#plot-sus-tokens .main-svg", timeout=30_000)
    note = page.inner_text("#sus-tokens-note")
    assert "tokens, each a vector of its susceptibilities to the" in note and "k-means" in note
    traces = page.evaluate(
        "() => document.getElementById('plot-sus-tokens').data.map(t => [t.name, t.x.length])"
    )
    assert traces and all(name.startswith("cluster ") and n > 0 for name, n in traces)
    assert "per token" in page.inner_text("#sus-status")


def test_views_fit_a_phone(lens_site, browser) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        for run_id, name in ((lens_site["ma"], "ma"), (lens_site["lm"], "lm")):
            page.goto(f"{lens_site['url']}/runs/{run_id}")
            page.wait_for_selector("#plot-sus-heatmap .main-svg", timeout=30_000)
            if name == "ma":
                page.wait_for_selector("#plot-inf-series .main-svg", timeout=30_000)
            else:
                page.wait_for_selector("#plot-sus-tokens .main-svg", timeout=30_000)
            overflow = page.evaluate(
                "() => [...document.querySelectorAll('#sus-view, #inf-view, #sus-view *,"
                " #inf-view *')]"
                ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
                ".map(e => e.id || e.className || e.tagName).slice(0, 5)"
            )
            assert overflow == [], overflow
            shoot(page, f"influence-{name}-390")
    finally:
        context.close()
