"""The influence and susceptibilities lenses as jobs: batched over a run's checkpoints,
each checkpoint sampled once across reruns, their sign changes reaching the phases job,
and the API slices the views read."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.models import Job, PhaseBoundary, Result, Run
from phaseboard.server.storage import BlobStore
from tests.server.jobs.conftest import add_checkpoints, all_final, fast_settings, wait_for

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

TINY_LLC: dict[str, Any] = {"num_chains": 2, "num_draws": 6, "batch_size": 16, "lr": 1e-4}
LENSES = {
    "influence": {"probe_examples": 4, "train_examples": 12, "top_k": 3},
    "susceptibilities": {"reference_examples": 16, "observable_examples": 4},
}


def _path(task_name: str, config: dict[str, Any], steps: list[int]) -> list[tuple[int, Any]]:
    """State dicts on a straight path from a random init, one per step."""
    from phaseboard.analysis.tasks import get_task

    torch.manual_seed(0)
    base = get_task(task_name, config).build_model().state_dict()
    gen = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in base.items()}
    return [(s, {k: v + i * direction[k] for k, v in base.items()}) for i, s in enumerate(steps)]


def _seed(
    settings: Any, task_name: str, config: dict[str, Any], steps: list[int]
) -> tuple[int, list[int]]:
    db = Database(settings)
    store = BlobStore(settings.storage_dir)
    try:
        with db.session() as s:
            run = Run(
                name=task_name, task=task_name, task_config=config,
                analysis_config={"llc": TINY_LLC, **LENSES},
            )  # fmt: skip
            s.add(run)
            s.flush()
            return run.id, add_checkpoints(s, store, run.id, _path(task_name, config, steps))
    finally:
        db.dispose()


def _newest(db: Database, run_id: int, kind: str) -> dict[str, Any]:
    with db.session() as s:
        return s.scalars(
            sa.select(Result.values)
            .where(Result.run_id == run_id, Result.kind == kind)
            .order_by(Result.id.desc())
            .limit(1)
        ).one()


MA = {"p": 7, "d_model": 8, "n_heads": 2, "d_mlp": 16, "train_fraction": 0.6}


def test_export_writes_both_lenses_arrays(tmp_path, backend: str) -> None:  # type: ignore[no-untyped-def]
    """``phaseboard export`` carries both lenses' arrays: JSON whole, CSV one value a row."""
    assert backend == "sqlite"  # the live server keeps its own SQLite file
    import csv
    import io
    import time

    import httpx

    from phaseboard import Phaseboard
    from phaseboard.server.commands.export import export_run
    from phaseboard.server.settings import Settings
    from tests.live_server import serve

    with serve(tmp_path, queue="local") as url:
        run_id, _ = _seed(Settings(home=tmp_path), "modular_addition", MA, [0, 10, 100])
        body = {"lenses": ["influence", "susceptibilities"]}
        assert httpx.post(f"{url}/api/runs/{run_id}/analyses", json=body).status_code == 202
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = httpx.get(f"{url}/api/runs/{run_id}/lenses").json()["states"]
            if all(states[k]["state"] == "done" for k in body["lenses"]):
                break
            time.sleep(0.3)
        with Phaseboard(url) as pb:
            data = json.loads(export_run(pb, run_id, "json"))["lens_data"]
            rows = list(csv.DictReader(io.StringIO(export_run(pb, run_id, "csv"))))
    inf, sus = data["influence"], data["susceptibilities"]
    n_groups = len(sus["groups"])
    assert np.array(inf["influence"], dtype=float).shape == (3, 4, 12)  # steps, test, train
    assert np.array(sus["per_item"], dtype=float).shape == (3, n_groups, 16)
    assert len(sus["items"]["text"]) == 16 and sus["sets"][-1] == "test"
    influence = [r for r in rows if r["section"] == "influence" and r["name"].startswith("test ")]
    assert len(influence) == 3 * 4 * 12
    chi = [r for r in rows if r["section"] == "susceptibilities" and " × " in r["name"]]
    assert len(chi) == 2 * 3 * n_groups * 4  # value and se: steps x groups x sets
    one = next(r for r in chi if r["name"] == "l0.h0 × test" and r["step"] == "10")
    assert float(one["value"]) == pytest.approx(sus["matrix"][1][5][3], rel=1e-6)


def test_both_lenses_cover_every_checkpoint_and_a_rerun_samples_only_the_new_one(
    make_settings,
) -> None:
    settings = fast_settings(
        make_settings, queue="local", auto_analyses="influence,susceptibilities"
    )
    run_id, ckpts = _seed(settings, "modular_addition", MA, [0, 10, 100])
    app = create_app(settings, start_workers=False)
    queue, db = app.state.queue, app.state.db
    queue.checkpoints_added(run_id, ckpts)
    with TestClient(app) as client:
        queue.start()
        done = {"influence", "susceptibilities", "phases"}
        jobs = wait_for(db, lambda js: all_final(js) and {j.kind for j in js} >= done, 120)
        assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]
        inf, sus = _newest(db, run_id, "influence"), _newest(db, run_id, "susceptibilities")

        assert inf["steps"] == [0, 10, 100] and inf["sampled_now"] == 3
        assert len(inf["probe_texts"]) == 4 and len(inf["train_texts"]) == 12
        assert all(" + " in t and " = " in t for t in inf["train_texts"])  # "a + b = c"
        got = client.get(f"/api/runs/{run_id}/influence/probe/1", params={"step": 10}).json()
        assert got["step"] == 10 and len(got["most"]) == 3 and len(got["least"]) == 3
        most = [e["influence"] for e in got["most"]]
        assert most == sorted(most, reverse=True)
        assert all(got["most"][-1]["influence"] >= e["influence"] for e in got["least"])
        assert all(len(v["influence"]) == 3 for v in got["series"].values())
        groups = sus["groups"]
        bad = client.get(f"/api/runs/{run_id}/influence/probe/1", params={"step": 11})
        assert bad.status_code == 422 and "not one of" in bad.text

        assert sus["sets"] == ["a_even", "small_sums", "wrapped_sums", "test"]
        assert groups == ["pos_embed", "embed", "attn", "mlp", "unembed", "l0.h0", "l0.h1"]
        matrix = np.array(sus["matrix"], dtype=float)
        assert matrix.shape == (3, len(groups), 4) and np.isfinite(matrix).all()
        assert sus["token_level"] is False and sus["clusters"] is None
        tokens = client.get(f"/api/runs/{run_id}/susceptibilities/tokens").json()
        assert tokens["step"] == 100 and len(tokens["items"]) == 16  # 4 sets x 4 examples
        assert all(len(i["chi"]) == len(groups) for i in tokens["items"])

        # a fourth checkpoint: the rerun samples it alone and keeps the first three rows
        more = _path("modular_addition", MA, [0, 10, 100, 1000])[3:]
        with db.session() as s:
            new_ids = add_checkpoints(s, app.state.store, run_id, more)
        before = np.array(sus["matrix"], dtype=float)
        queue.checkpoints_added(run_id, new_ids)
        wait_for(
            db,
            lambda js: (
                all_final(js)
                and sum(j.kind == "susceptibilities" for j in js) == 2
                and sum(j.kind == "influence" for j in js) == 2
            ),
            120,
        )
        sus2, inf2 = _newest(db, run_id, "susceptibilities"), _newest(db, run_id, "influence")
    assert sus2["steps"] == [0, 10, 100, 1000] and sus2["sampled_now"] == 1
    assert inf2["sampled_now"] == 1
    np.testing.assert_array_equal(np.array(sus2["matrix"], dtype=float)[:3], before)


def test_token_task_susceptibilities_are_per_token_and_clustered(make_settings) -> None:
    config = {
        "vocab": 12, "seq_len": 8, "span_min": 2, "span_max": 4, "d_model": 8, "n_layers": 1,
        "n_heads": 2, "num_samples": 64, "num_test": 16,
    }  # fmt: skip
    settings = fast_settings(make_settings, queue="local", auto_analyses="susceptibilities")
    run_id, ckpts = _seed(settings, "attention_lm", config, [0, 10])
    app = create_app(settings, start_workers=False)
    app.state.queue.checkpoints_added(run_id, ckpts)
    with TestClient(app) as client:
        app.state.queue.start()
        jobs = wait_for(
            app.state.db,
            lambda js: all_final(js) and any(j.kind == "susceptibilities" for j in js),
            120,
        )
        assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]
        sus = _newest(app.state.db, run_id, "susceptibilities")
        tokens = client.get(f"/api/runs/{run_id}/susceptibilities/tokens", params={"step": 0})
    assert sus["token_level"] is True and len(sus["clusters"]) == 2
    assert sus["sets"] == ["repeated_tokens", "first_occurrence", "test"]
    items = tokens.json()["items"]
    assert len(items) == 3 * 4 * 8  # sets x examples x positions
    with_target = [i for i in items if i["cluster"] is not None]
    assert with_target and all(i["xy"] is not None for i in with_target)
    assert all(i["cluster"] is None for i in items if i["chi"][0] is None)  # no target there
    assert "→" in items[0]["text"]


def test_sign_changes_reach_the_phases_job_as_boundaries(make_settings) -> None:
    """The phases lens takes a feeding lens's ``turning_points``: a stored susceptibilities
    result with one becomes a boundary of source "susceptibilities"."""
    from phaseboard.server.jobs.planning import plan_jobs

    settings = fast_settings(make_settings, queue="local", auto_analyses="metrics")
    run_id, _ = _seed(settings, "modular_addition", MA, [0, 10, 100])
    app = create_app(settings, start_workers=False)
    db = app.state.db
    with db.session() as s:
        s.add(
            Result(
                run_id=run_id, kind="susceptibilities",
                values={"turning_points": [{"step": 31.0, "source": "susceptibilities",
                                            "kind": "sign_change", "score": 7.0, "label": ""}]},
            )
        )  # fmt: skip
        plan_jobs(s, run_id, ["phases"])
    with TestClient(app):
        app.state.queue.start()
        wait_for(db, lambda js: all_final(js) and any(j.kind == "phases" for j in js))
    with db.session() as s:
        found = s.execute(sa.select(PhaseBoundary.step, PhaseBoundary.source)).all()
        kinds = s.scalars(sa.select(Job.kind)).all()
    assert (31.0, "susceptibilities") in [(float(a), b) for a, b in found], (found, kinds)
