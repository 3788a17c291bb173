"""Several runs on one picture: /api/groups/bands and /api/groups/paths, read off the runs'
stored results (the essential-dynamics outputs blob is written by the real job)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.blob_gc import collect_garbage
from phaseboard.server.db import Database
from phaseboard.server.models import Result, Run
from phaseboard.server.storage import BlobStore
from tests.server.jobs.conftest import (
    TINY_TASK,
    add_checkpoints,
    all_final,
    fast_settings,
    state_dict,
    wait_for,
)

STEPS = [1, 10, 100, 1000]


def _add_run(settings, name: str, task: str, task_config, weights) -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    """A run with a checkpoint per ``(step, state_dict)`` of ``weights``: (run id, ids)."""
    db = Database(settings)
    store = BlobStore(settings.storage_dir)
    try:
        with db.session() as s:
            run = Run(name=name, task=task, task_config=task_config)
            s.add(run)
            s.flush()
            return run.id, add_checkpoints(s, store, run.id, weights)
    finally:
        db.dispose()


def _dln_run(settings, name: str, seed: int, task_config=None) -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    """A dln run whose checkpoint at STEPS[i] has weights of torch seed ``seed + i``."""
    weights = [(step, state_dict(seed + i)) for i, step in enumerate(STEPS)]
    return _add_run(settings, name, "dln", task_config or TINY_TASK, weights)


def _essential_dynamics_done(db: Database, runs: int) -> None:
    """Wait until every run's essential-dynamics job is final; all must be done."""
    jobs = wait_for(
        db,
        lambda js: all_final(js) and sum(j.kind == "essential_dynamics" for j in js) == runs,
    )
    assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]


def _outputs(store: BlobStore, sha: str) -> np.ndarray:
    with store.open_path(sha).open("rb") as fh:
        return np.load(io.BytesIO(fh.read()))


def test_paths_put_seed_runs_in_one_pc_space_and_skip_other_probes(make_settings) -> None:
    settings = fast_settings(make_settings, queue="local", auto_analyses="essential_dynamics")
    a, a_ck = _dln_run(settings, "seed-a", 0)
    b, b_ck = _dln_run(settings, "seed-b", 100)
    twin, twin_ck = _dln_run(settings, "seed-a-again", 0)  # the same weights as seed-a
    other, other_ck = _dln_run(settings, "other-data", 0, {**TINY_TASK, "seed": 7})
    bare, _ = _dln_run(settings, "no-result", 0)
    app = create_app(settings, start_workers=False)
    queue, db, store = app.state.queue, app.state.db, app.state.store
    for run_id, ckpts in ((a, a_ck), (b, b_ck), (twin, twin_ck), (other, other_ck)):
        queue.checkpoints_added(run_id, ckpts)
    with TestClient(app) as client:
        queue.start()
        _essential_dynamics_done(db, 4)
        ed = {r: client.get(f"/api/runs/{r}/lenses").json()["essential_dynamics"] for r in (a, b)}
        out_a = _outputs(store, ed[a]["outputs_blob"])
        out_b = _outputs(store, ed[b]["outputs_blob"])
        assert out_a.dtype == np.float16 and out_a.shape == (4, 32 * 2)  # dln: 32 test x 2
        probe = ed[a]["probe"]
        assert probe["task"] == "dln" and probe["split"] == "test"
        assert probe["probe_examples"] == 128 and len(probe["probe_hash"]) == 16
        assert ed[b]["probe"] == probe  # same data, other weights: the same probe set

        got = client.get("/api/groups/paths", params={"runs": f"{a},{b},{twin},{other},{bare}"})
        assert got.status_code == 200, got.text
        body = got.json()
    assert [p["id"] for p in body["paths"]] == [a, b, twin]
    reasons = {s["run"]: s["reason"] for s in body["skipped"]}
    assert reasons[bare] == "no essential-dynamics result yet"
    assert reasons[other].startswith("different probe examples than seed-a")
    ev = body["explained_variance"]
    assert len(ev) == 3 and 0 < sum(ev) <= 1 + 1e-9 and ev == sorted(ev, reverse=True)
    paths = {p["id"]: p for p in body["paths"]}
    assert all(p["steps"] == STEPS and len(p["components"]) == 4 for p in paths.values())
    # the twin has the same weights: the same path, at distance 0 from seed-a
    np.testing.assert_allclose(paths[twin]["components"], paths[a]["components"], atol=1e-9)
    dist = {(d["a"], d["b"]): d for d in body["distances"]}
    assert set(dist) == {(a, b), (a, twin), (b, twin)}
    assert dist[(a, twin)]["step"] == STEPS and dist[(a, twin)]["rms"] == [0.0] * 4
    # seed-a vs seed-b: the RMS difference of the stored outputs (float64 on float16 values)
    want = np.sqrt(((out_a.astype(float) - out_b.astype(float)) ** 2).mean(1))
    np.testing.assert_allclose(dist[(a, b)]["rms"], want, rtol=1e-9)
    assert all(r > 0 for r in dist[(a, b)]["rms"])
    summary = body["distance_summary"]
    assert summary["n_pairs"] == 3 and summary["step"] == STEPS
    np.testing.assert_allclose(summary["mean"], (2 * want + 0) / 3, rtol=1e-9)  # a-b, b-twin, 0
    np.testing.assert_allclose(summary["lower"], 0, atol=1e-12)
    # the outputs blobs are no checkpoint's, but results point to them: gc keeps them
    report = collect_garbage(db, store, min_age_s=0.0)
    assert ed[a]["outputs_blob"] not in report.removed and store.exists(ed[a]["outputs_blob"])


def test_seeds_with_their_own_data_share_one_pc_space(make_settings) -> None:
    """tms runs that differ in their data seed (other training and test examples) are probed
    on the task's shared probe, so the compare page puts them in one PC space."""
    import torch

    from phaseboard.analysis.tasks import get_task

    settings = fast_settings(make_settings, queue="local", auto_analyses="essential_dynamics")
    ids = {}
    for seed in (0, 1):
        config = {"n_features": 5, "n_hidden": 2, "seed": seed}
        weights = []
        for i, step in enumerate(STEPS):
            torch.manual_seed(10 * seed + i)
            weights.append((step, get_task("tms", config).build_model().state_dict()))
        run_id, ckpts = _add_run(settings, f"tms-seed{seed}", "tms", config, weights)
        ids[run_id] = ckpts
    app = create_app(settings, start_workers=False)
    queue, db = app.state.queue, app.state.db
    for run_id, ckpts in ids.items():
        queue.checkpoints_added(run_id, ckpts)
    with TestClient(app) as client:
        queue.start()
        _essential_dynamics_done(db, 2)
        a, b = ids
        probes = [
            client.get(f"/api/runs/{r}/lenses").json()["essential_dynamics"]["probe"] for r in ids
        ]
        assert probes[0]["split"] == "shared" and probes[0]["probe_hash"] == probes[1]["probe_hash"]
        assert probes[0]["task_config_hash"] != probes[1]["task_config_hash"]
        body = client.get("/api/groups/paths", params={"runs": f"{a},{b}"}).json()
    assert [p["id"] for p in body["paths"]] == [a, b] and body["skipped"] == []


def test_paths_skip_results_without_outputs_and_refuse_bad_groups(client) -> None:
    ids = [client.post("/api/runs", json={"name": f"r{i}"}).json()["id"] for i in range(13)]
    old = {"steps": STEPS, "components": [[0, 0, 0]] * 4, "explained_variance": [1, 0, 0]}
    app_db = Database(client.app.state.settings)
    try:
        with app_db.session() as s:
            s.add(Result(run_id=ids[0], kind="essential_dynamics", values=old))
            s.add(
                Result(
                    run_id=ids[1],
                    kind="essential_dynamics",
                    values={**old, "outputs_blob": None, "outputs_skipped": "too big"},
                )
            )
            s.add(
                Result(
                    run_id=ids[2],
                    kind="essential_dynamics",
                    values={**old, "outputs_blob": "0" * 64},
                )
            )
    finally:
        app_db.dispose()
    got = client.get("/api/groups/paths", params={"runs": f"{ids[0]},{ids[1]},{ids[2]}"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["paths"] == [] and body["distances"] == [] and body["distance_summary"] is None
    reasons = [s["reason"] for s in body["skipped"]]
    assert "predates stored outputs" in reasons[0] and reasons[1] == "too big"
    assert reasons[2] == "its outputs blob is gone from the store"
    for bad, code in (
        (",".join(map(str, ids)), 422),  # 13 runs
        (f"{ids[0]},x", 422),
        ("", 422),
        (f"{ids[0]},²", 422),
        (f"{ids[0]},999999", 404),
    ):
        for route in ("/api/groups/paths", "/api/groups/bands"):
            got = client.get(route, params={"runs": bad})
            assert got.status_code == code, (route, bad, got.text)
    got = client.get("/api/groups/bands", params={"runs": str(ids[0]), "band": "iqr"})
    assert got.status_code == 422


def _loss(seed: int, step: int) -> float:
    return 3.0 / (1 + math.log10(step)) + 0.1 * seed


def test_bands_give_mean_and_band_of_losses_llc_and_progress_over_the_runs(
    client, settings
) -> None:
    ids = [client.post("/api/runs", json={"name": f"seed{i}"}).json()["id"] for i in range(3)]
    for seed, run_id in enumerate(ids):
        points = [{"name": "train_loss", "step": s, "value": _loss(seed, s)} for s in STEPS]
        if seed < 2:  # the third run logs no test loss
            points += [{"name": "test_loss", "step": s, "value": 2.0} for s in STEPS]
        assert client.post(f"/api/runs/{run_id}/metrics", json=points).status_code == 200
    db = Database(settings)
    try:
        with db.session() as s:
            for seed, run_id in enumerate(ids):
                for step in STEPS[1:]:
                    llc = {"mean": 10.0 + seed, "std": 1.0, "verdict": "ok"}
                    s.add(Result(run_id=run_id, step=step, kind="llc", values=llc))
                    progress = {"progress/kgon_k": float(seed), "train_loss": 1.0}
                    s.add(Result(run_id=run_id, step=step, kind="metrics", values=progress))
    finally:
        db.dispose()
    runs = ",".join(map(str, ids))
    body = client.get("/api/groups/bands", params={"runs": runs}).json()
    assert body["band"] == "minmax" and [r["id"] for r in body["runs"]] == ids
    # defaults: the logged losses every run has, the LLC, the progress measures
    assert list(body["series"]) == ["train_loss", "llc", "progress/kgon_k"]
    assert "test_loss" not in body["available"] and "ckpt/train_loss" in body["available"]
    loss = body["series"]["train_loss"]
    assert loss["step"] == STEPS and loss["n"] == 3 and loss["missing"] == []
    for k, step in enumerate(STEPS):
        vals = [_loss(seed, step) for seed in range(3)]
        assert loss["mean"][k] == pytest.approx(sum(vals) / 3, abs=1e-12)
        assert loss["lower"][k] == pytest.approx(min(vals), abs=1e-12)
        assert loss["upper"][k] == pytest.approx(max(vals), abs=1e-12)
    assert [r["value"] for r in loss["runs"]][1] == [_loss(1, s) for s in STEPS]
    llc = body["series"]["llc"]
    assert llc["step"] == STEPS[1:] and llc["mean"] == [11.0] * 3
    assert llc["lower"] == [10.0] * 3 and llc["upper"] == [12.0] * 3

    body = client.get(
        "/api/groups/bands",
        params={"runs": runs, "band": "std", "series": "llc,test_loss,nope"},
    ).json()
    assert list(body["series"]) == ["llc", "test_loss", "nope"] and body["band"] == "std"
    llc = body["series"]["llc"]
    assert llc["lower"] == pytest.approx([10.0] * 3, abs=1e-12)  # 11 ± sample std 1
    assert llc["upper"] == pytest.approx([12.0] * 3, abs=1e-12)
    test_loss = body["series"]["test_loss"]
    assert test_loss["missing"] == [ids[2]] and test_loss["n"] == 2
    assert test_loss["lower"] == test_loss["upper"] == [2.0] * 4
    nope = body["series"]["nope"]
    assert nope["n"] == 0 and nope["missing"] == ids and nope["step"] == []
