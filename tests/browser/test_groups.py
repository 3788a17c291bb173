"""Several seeds on one picture (compare page), in a real Chromium against a real server.

Three tms runs tagged ``tms-seeds``: logged losses, LLC and progress-measure results, and
essential-dynamics results with an outputs blob on one probe set, written as rows the way the
jobs write them (pages only read rows).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest

from phaseboard.server.models import Result, Run
from phaseboard.server.series_store import upsert_points
from phaseboard.server.settings import Settings
from phaseboard.server.storage import BlobStore
from tests.browser.conftest import ARTIFACTS, PHONE, shoot

pytestmark = pytest.mark.browser

STEPS = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
PROBE = {
    "task": "tms",
    "task_config_hash": "a" * 16,
    "split": "test",
    "probe_examples": 64,
    "probe_hash": "b" * 16,
}


def _store(site) -> BlobStore:  # type: ignore[no-untyped-def]
    return BlobStore(Settings(home=Path(site.db.engine.url.database).parent).storage_dir)


def _outputs(seed: int) -> np.ndarray:
    """(checkpoints, 64 x 6) outputs: a shared two-stage path, each seed a little off it."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99).normal(size=(3, 64 * 6))
    x = np.log10(STEPS)[:, None]
    first = 1 / (1 + np.exp(-4 * (x - 1.8 - 0.1 * seed)))
    second = 1 / (1 + np.exp(-5 * (x - 3.0 + 0.15 * seed)))
    path = first * base[0] + second * base[1] + 0.2 * np.sin(2 * x) * base[2]
    return path + 0.05 * (1 + seed) * x * rng.normal(size=path.shape)


def _ed_values(site, outputs: np.ndarray, probe: dict) -> dict:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    np.save(buf, outputs.astype(np.float16))
    return {
        "steps": STEPS,
        "components": [[0.0, 0.0, 0.0]] * len(STEPS),
        "explained_variance": [0.6, 0.3, 0.1],
        "turning_points": [],
        "probe_examples": probe["probe_examples"],
        "output_dim": outputs.shape[1],
        "probe": probe,
        "outputs_blob": _store(site).put_bytes(buf.getvalue()),
    }


def _llc(seed: int, step: int) -> float:
    return 2 + 4 / (1 + math.exp(-4 * (math.log10(step) - 2.5 - 0.12 * (seed - 1)))) + 0.2 * seed


def _seed_group(site, name: str = "tms-6-2", tag: str = "tms-seeds") -> list[int]:  # type: ignore[no-untyped-def]
    ids = []
    with site.db.session() as s:
        for seed in range(3):
            run = Run(
                name=f"{name}-seed{seed}",
                task="tms",
                task_config={"n_features": 6, "n_hidden": 2, "steps": 5000},
                tags=[tag],
            )
            s.add(run)
            s.flush()
            ids.append(run.id)
            shift = 0.12 * (seed - 1)
            rows = []
            for st in range(10, 5001, 10):
                x = math.log10(st)
                drop = 1 / (1 + math.exp(-4 * (x - 2.3 - shift)))
                rows.append(("train_loss", st, 0.2 - 0.15 * drop + 0.004 * math.sin(st + seed)))
                if st in STEPS:
                    rows.append(("test_loss", st, 0.21 - 0.15 * drop))
            upsert_points(s, run.id, rows)
            for st in STEPS:
                x = math.log10(st)
                k = 0 if x < 2 + shift else (3 if x < 3 + shift else 5)
                s.add(
                    Result(
                        run_id=run.id,
                        step=st,
                        kind="metrics",
                        values={
                            "progress/features_represented": float(min(6, k + (x > 3.4))),
                            "progress/kgon_k": float(k),
                        },
                    )
                )
                llc = _llc(seed, st)
                s.add(
                    Result(
                        run_id=run.id,
                        step=st,
                        kind="llc",
                        values={"mean": llc, "std": 0.3, "verdict": "ok"},
                    )
                )
            s.add(
                Result(
                    run_id=run.id,
                    kind="essential_dynamics",
                    values=_ed_values(site, _outputs(seed), PROBE),
                )
            )
    return ids


def test_compare_by_tag_draws_bands_paths_and_distances_of_the_seeds(site, page) -> None:
    ids = _seed_group(site)
    other = site.seeded.other_run_id  # tms-5-2: probed on other examples
    with site.db.session() as s:
        probe = {**PROBE, "probe_hash": "c" * 16}
        s.add(
            Result(
                run_id=other, kind="essential_dynamics", values=_ed_values(site, _outputs(5), probe)
            )
        )
    page.goto(f"{site.url}/compare?tag=tms-seeds")
    page.wait_for_selector("#groups[data-bands-loaded='true']", timeout=20_000)
    page.wait_for_selector("#groups[data-paths-loaded='true']", timeout=20_000)
    assert page.locator("#groups").get_attribute("data-runs") == ",".join(map(str, ids))
    assert "tms-6-2-seed2" in page.inner_text("main")
    # Bands: one panel per measure the runs share; mean + band + each run thin behind.
    panels = page.locator(".band-card").evaluate_all("els => els.map(e => e.dataset.series)")
    assert panels == [
        "test_loss",
        "train_loss",
        "llc",
        "progress/features_represented",
        "progress/kgon_k",
    ]
    traces = page.evaluate(
        "() => document.getElementById('plot-band-llc').data.map(t => [t.name, t.fill || '',"
        " t.line.width, t.y.length])"
    )
    names = [t[0] for t in traces]
    # the band first (behind), then each run thin, then the mean on top
    assert names[:2] == ["band upper", "band"] and traces[1][1] == "tonexty"
    assert names[2:5] == [f"tms-6-2-seed{i}" for i in range(3)]
    assert all(t[2] < 2 for t in traces[2:5]) and names[5:] == ["mean of 3 runs"]
    mean = page.evaluate(
        "() => document.getElementById('plot-band-llc').data.find(t => t.name.startsWith('mean')).y"
    )
    want = [sum(_llc(seed, st) for seed in range(3)) / 3 for st in STEPS]
    assert mean == pytest.approx(want, abs=1e-9)
    assert "min – max band" in page.inner_text("#bands-status")
    assert "minimum to maximum" in page.inner_text("#band-what")
    # ± std band: the address keeps it.
    page.select_option("#g-band", "std")
    page.wait_for_function(
        "() => document.getElementById('bands-status').textContent.includes('std')"
    )
    assert "gband=std" in page.url and "standard deviation" in page.inner_text("#band-what")
    # Paths: one line per run in one PC space, explained variance on the axes.
    paths = page.evaluate(
        "() => document.getElementById('plot-jp12').data.map(t => [t.name, t.x.length])"
    )
    assert paths == [[f"tms-6-2-seed{i}", len(STEPS)] for i in range(3)]
    assert "%)" in page.inner_text("#plot-jp12") and "PC3 (" in page.inner_text("#plot-jp13")
    hover = page.evaluate("() => document.getElementById('plot-jp12').data[0].hovertemplate")
    assert hover.startswith("tms-6-2-seed0<br>step %{customdata}")
    dist = page.evaluate(
        "() => { const el = document.getElementById('plot-fdist');"
        " return [el.data.map(t => [t.name, t.y.length, Math.min(...t.y)]),"
        " el.layout.xaxis.type]; }"
    )
    assert dist[1] == "log"
    pairs = [t for t in dist[0] if t[0].startswith("tms-6-2-seed")]
    assert len(pairs) == 3 and all(n == len(STEPS) and low > 0 for _, n, low in pairs)
    assert "mean of 3 pairs" in [t[0] for t in dist[0]]
    assert "3 run(s) in one PC space" in page.inner_text("#paths-status")
    page.locator("#groups").scroll_into_view_if_needed()
    shoot(page, "groups-compare-desktop")
    # Overlay: the runs alone, no mean, no band.
    page.select_option("#g-view", "overlay")
    names = page.evaluate("() => document.getElementById('plot-band-llc').data.map(t => t.name)")
    assert names == [f"tms-6-2-seed{i}" for i in range(3)]
    page.select_option("#g-view", "band")
    # Measures: unticking one drops its panel; the address keeps the choice.
    page.click("#g-more summary")
    page.uncheck("#g-series input[value='test_loss']")
    page.wait_for_function("() => document.querySelectorAll('.band-card').length === 4")
    assert "gseries=train_loss,llc,progress" in page.url
    page.click("#g-more summary")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(500)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shoot(page, "groups-compare-phone")
    page.click("#g-more summary")  # the open measures list stays on the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.locator("#g-more").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "groups-measures-phone.png"))

    # A run probed on other examples is left out of the paths, with the reason.
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{site.url}/compare?runs={other}&tag=tms-seeds")
    page.wait_for_selector("#groups[data-paths-loaded='true']", timeout=20_000)
    status = page.inner_text("#paths-status")
    assert "3 run(s) in one PC space" in status
    assert "tms-5-2 (different probe examples than tms-6-2-seed0" in status


def test_compare_without_shared_results_shows_status_lines_not_empty_frames(site, page) -> None:
    with site.db.session() as s:
        bare = [Run(name=f"bare-{i}", task="tms", task_config={}) for i in range(2)]
        s.add_all(bare)
        s.flush()
        ids = [r.id for r in bare]
    page.goto(f"{site.url}/compare?runs={ids[0]},{ids[1]}")
    page.wait_for_selector("#groups[data-bands-loaded='true']", timeout=20_000)
    page.wait_for_selector("#groups[data-paths-loaded='true']", timeout=20_000)
    assert "No measure that the runs share yet" in page.inner_text("#bands-status")
    assert page.locator(".band-card").count() == 0
    assert "No run has essential-dynamics outputs" in page.inner_text("#paths-status")
    assert "bare-0 (no essential-dynamics result yet)" in page.inner_text("#paths-status")
    for card in ("#card-jp12", "#card-jp13", "#card-fdist"):
        assert not page.locator(card).is_visible()
    page.goto(f"{site.url}/compare?tag=no-such-tag")
    assert "No run carries the tag 'no-such-tag'" in page.inner_text("#tag-note")


def test_compare_redraws_while_the_runs_jobs_run_and_stops_after(site, page) -> None:
    """A seed whose essential dynamics is still queued joins the paths when its result
    lands, without a reload; the note says jobs are running, and goes once they end."""
    from phaseboard.server.models import Job

    ids = _seed_group(site, name="late", tag="late-seeds")
    with site.db.session() as s:
        s.query(Result).filter_by(run_id=ids[2], kind="essential_dynamics").delete()
        job = Job(
            run_id=ids[2], kind="essential_dynamics", config={}, config_hash="h",
            dedupe_key=f"{ids[2]}:-:essential_dynamics::late", state="queued",
        )  # fmt: skip
        s.add(job)
        s.flush()
        job_id = job.id
    page.goto(f"{site.url}/compare?tag=late-seeds")
    page.wait_for_selector("#groups[data-paths-loaded='true']", timeout=20_000)
    page.wait_for_selector("#groups[data-jobs-active='1']", timeout=20_000)
    assert "1 job(s) of these runs are queued or running" in page.inner_text("#groups-jobs")
    assert "late-seed2 (no essential-dynamics result yet)" in page.inner_text("#paths-status")
    page.locator("#groups").scroll_into_view_if_needed()
    shoot(page, "groups-updating-desktop")
    with site.db.session() as s:
        values = _ed_values(site, _outputs(2), PROBE)
        s.add(Result(run_id=ids[2], kind="essential_dynamics", values=values))
        s.get(Job, job_id).state = "done"
    # Back in the window: a check at once (not the next 15 s tick) sees no job left,
    # redraws once more and stops.
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    page.wait_for_function(
        "() => document.getElementById('paths-status').textContent.includes('3 run(s)')",
        timeout=5_000,
    )
    assert page.locator("#groups-jobs").is_hidden()
    assert page.locator("#groups").get_attribute("data-jobs-active") == "0"
