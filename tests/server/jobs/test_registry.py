"""The lens registry: every declaration is complete and every consumer reads it, and a lens
registered in a test alone flows through planning, the worker and the API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.analysis.checkpoints import save_safetensors_bytes
from phaseboard.server import lenses
from phaseboard.server.app import create_app
from phaseboard.server.blob_gc import collect_garbage
from phaseboard.server.jobs import lanes
from phaseboard.server.jobs.handlers import JobContext, ResultRows, usable_checkpoints
from phaseboard.server.jobs.planning import analyses_for_run, run_analyses_for_run
from phaseboard.server.lenses import Lens, registered
from phaseboard.server.models import Job, Result, Run
from phaseboard.server.settings import REPO_ROOT
from tests.server.jobs.conftest import TINY_TASK, fast_settings, state_dict

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])

TEMPLATES = REPO_ROOT / "frontend" / "templates"
STATIC = REPO_ROOT / "frontend" / "static"


def test_every_lens_declares_a_handler_a_lane_a_view_and_a_title() -> None:
    found = lenses.all_lenses()
    assert {"metrics", "llc", "llc_restricted", "phases", "calibrate"} <= {x.name for x in found}
    assert {"essential_dynamics", "learning_order"} <= {x.name for x in found}
    for lens in found:
        assert callable(lens.handler), lens.name
        assert lens.lane in ("fast", "heavy"), lens.name
        assert lanes.is_fast(lens.name) == (lens.lane == "fast"), lens.name
        assert lanes.is_batched(lens.name) == (lens.batch_handler is not None)
        if lens.internal:
            continue
        assert lens.title and lens.description, lens.name
        assert lens.view is not None, f"{lens.name} has no view"
        assert (TEMPLATES / lens.view.template).is_file(), lens.view.template
        if lens.view.script is not None:
            assert (STATIC / lens.view.script).is_file(), lens.view.script
        if lens.view.placement == "lenses" and lens.view.script is not None:  # it loads it
            partial = (TEMPLATES / lens.view.template).read_text()
            assert f"/static/{lens.view.script}" in partial, lens.view.template


def test_every_public_lens_module_declares_its_lenses() -> None:
    import importlib
    import pkgutil

    package = Path(lenses.__file__).parent
    modules = [m.name for m in pkgutil.iter_modules([str(package)]) if not m.name.startswith("_")]
    declared = set()
    for name in modules:
        mod = importlib.import_module(f"phaseboard.server.lenses.{name}")
        assert mod.LENSES and all(isinstance(x, Lens) for x in mod.LENSES), name
        declared |= {x.name for x in mod.LENSES}
    assert declared == set(lenses.lens_names())


def test_a_declaration_that_cannot_work_is_refused_naming_the_problem() -> None:
    def handler(ctx: JobContext) -> ResultRows:
        return []

    with pytest.raises(ValueError, match="lower_snake_case"):
        Lens(name="Bad Name", title="x", scope="run", handler=handler)
    with pytest.raises(ValueError, match="auto needs a lens queued as checkpoints arrive"):
        Lens(name="x", title="x", scope="run", handler=handler, auto=True)
    with pytest.raises(ValueError, match="batch_handler is for checkpoint-scope"):
        Lens(name="x", title="x", scope="run", handler=handler, batch_handler=lambda c: {})
    with pytest.raises(ValueError, match="lane must be"):
        Lens(name="x", title="x", scope="checkpoint", handler=handler, lane="medium")  # type: ignore[arg-type]
    with pytest.raises(lenses.UnknownLens, match="unknown lens 'nope'; known lenses: calibrate"):
        lenses.get_lens("nope")


@SQLITE
def test_unset_auto_analyses_means_the_registrys_automatic_lenses(make_settings) -> None:
    settings = make_settings()
    assert settings.auto_analyses is None
    run = Run(name="r", task="dln", analysis_config={})
    auto = [x.name for x in lenses.all_lenses() if x.auto]
    assert sorted(analyses_for_run(run, None) + run_analyses_for_run(run, None)) == sorted(auto)
    assert analyses_for_run(run, "") == [] and run_analyses_for_run(run, "") == []
    assert analyses_for_run(run, "llc, phases") == ["llc"]  # phases reruns on results
    assert run_analyses_for_run(run, "learning_order,llc") == ["learning_order"]


@SQLITE
def test_gc_keeps_every_blob_a_lens_declares_and_removes_the_rest(make_settings) -> None:
    settings = make_settings()
    app = create_app(settings, start_workers=False)
    store, db = app.state.store, app.state.db
    keys = lenses.result_blob_keys()
    assert ("essential_dynamics", "outputs_blob") in keys
    assert ("learning_order", "losses_blob") in keys
    kept = {}
    with db.session() as s:
        run = Run(name="gc", task="dln", task_config=TINY_TASK)
        s.add(run)
        s.flush()
        for i, (lens, key) in enumerate(keys):
            kept[(lens, key)] = sha = store.put_bytes(f"{lens}:{key}".encode())
            s.add(Result(run_id=run.id, kind=lens, restriction=str(i), values={key: sha}))
    orphan = store.put_bytes(b"no result names me")
    report = collect_garbage(db, store, min_age_s=0.0)
    assert report.removed == [orphan]
    assert all(store.exists(sha) for sha in kept.values())


# --- a lens registered here only ------------------------------------------------------


def _count_checkpoints(ctx: JobContext) -> ResultRows:
    """A toy run-scope lens: how many checkpoints it read, and a blob GC must keep."""
    n = len(usable_checkpoints(ctx.db, ctx.run_id))
    blob = ctx.store.put_bytes(f"read {n} checkpoints of run {ctx.run_id}".encode())
    return [{"restriction": "", "values": {"n": n, "scale": ctx.config["scale"], "blob": blob}}]


def _toy_config(plan: Any) -> dict[str, Any]:
    return {"scale": plan.run_config("toy_count").get("scale", 1)}


TOY = Lens(
    name="toy_count",
    title="toy count",
    scope="run",
    description="Counts the run's checkpoints (a test lens).",
    handler=_count_checkpoints,
    config=_toy_config,
    lane="fast",
    min_checkpoints=2,
    rerun="checkpoints",
    result_blobs=("blob",),
)


def _upload(client: TestClient, run_id: int, step: int, seed: int) -> None:
    files = {"file": ("m.safetensors", save_safetensors_bytes(state_dict(seed)))}
    resp = client.post(f"/api/runs/{run_id}/checkpoints", files=files, data={"step": str(step)})
    assert resp.status_code == 201, resp.text


def _settled(client: TestClient, run_id: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        got = client.get("/api/jobs", params={"run_id": run_id}).json()
        busy = got["counts"]["queued"] + got["counts"]["running"]
        quiet = quiet + 1 if not busy else 0
        assert time.monotonic() < deadline, got["jobs"]
        time.sleep(0.3)
    return got["jobs"]


def test_a_lens_registered_in_a_test_waits_runs_and_keeps_its_blob(make_settings) -> None:
    settings = fast_settings(make_settings, queue="local")
    body = {
        "name": "toy",
        "task": "dln",
        "task_config": TINY_TASK,
        "analysis_config": {"analyses": ["toy_count"], "toy_count": {"scale": 3}},
    }
    with registered(TOY), TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json=body).json()["id"]
        _upload(client, run_id, 1, 0)
        jobs = _settled(client, run_id)
        assert [(j["kind"], j["state"]) for j in jobs] == [("toy_count", "waiting")]
        assert jobs[0]["progress_msg"] == "waiting for a 2nd checkpoint"
        state = client.get(f"/api/runs/{run_id}/lenses").json()["states"]["toy_count"]
        assert (state["state"], state["message"]) == ("waiting", "waiting for a 2nd checkpoint")
        assert "waiting for a 2nd checkpoint" in client.get(f"/runs/{run_id}").text
        listed = client.get("/api/lenses").json()["lenses"]
        toy = next(x for x in listed if x["name"] == "toy_count")
        assert (toy["scope"], toy["min_checkpoints"], toy["lane"]) == ("run", 2, "fast")

        _upload(client, run_id, 10, 1)
        jobs = _settled(client, run_id)
        assert all(j["state"] == "done" for j in jobs), jobs
        (result,) = client.get(f"/api/runs/{run_id}/results", params={"kind": "toy_count"}).json()[
            "results"
        ]
        assert result["values"]["n"] == 2 and result["values"]["scale"] == 3
        state = client.get(f"/api/runs/{run_id}/lenses").json()["states"]["toy_count"]
        assert state["state"] == "done"
        report = collect_garbage(client.app.state.db, client.app.state.store, min_age_s=0.0)
        assert result["values"]["blob"] not in report.removed
    assert lenses.find_lens("toy_count") is None  # gone with the block


def _no_dln(task: Any) -> str | None:
    return "toy lenses do not read deep linear networks" if task.name == "dln" else None


ONLY_NOT_DLN = Lens(
    name="toy_not_dln",
    title="toy (not for dln)",
    scope="checkpoint",
    description="Applies to every task but dln (a test lens).",
    handler=lambda ctx: [{"restriction": "", "values": {"ran": True}}],
    lane="fast",
    applies=_no_dln,
)


@SQLITE
def test_a_lens_that_does_not_apply_says_so_once_and_checks_again_after_a_change(
    make_settings,
) -> None:
    settings = fast_settings(make_settings, queue="local")
    body = {"name": "na", "task": "dln", "task_config": TINY_TASK}
    with registered(ONLY_NOT_DLN), TestClient(create_app(settings)) as client:
        run_id = client.post(
            "/api/runs", json={**body, "analysis_config": {"analyses": ["toy_not_dln"]}}
        ).json()["id"]
        for step in (1, 10, 100):
            _upload(client, run_id, step, step)
            jobs = _settled(client, run_id)
        assert [(j["kind"], j["state"]) for j in jobs] == [("toy_not_dln", "not_applicable")]
        assert jobs[0]["progress_msg"] == "toy lenses do not read deep linear networks"
        assert jobs[0]["error"] is None
        state = client.get(f"/api/runs/{run_id}/lenses").json()["states"]["toy_not_dln"]
        assert state["state"] == "not_applicable" and "deep linear" in state["message"]
        page = client.get(f"/runs/{run_id}").text
        assert page.count("toy lenses do not read deep linear networks") == 1
        again = client.post(f"/api/runs/{run_id}/analyses", json={"lenses": ["toy_not_dln"]})
        assert again.status_code == 202
        assert again.json()["job_ids"] == [jobs[0]["id"]]
        assert again.json()["not_applicable"] == {"toy_not_dln": jobs[0]["progress_msg"]}

        # The run changed (a note, a task config): the next plan checks again, once.
        client.patch(f"/api/runs/{run_id}", json={"notes": "changed"})
        _upload(client, run_id, 1000, 4)
        jobs = _settled(client, run_id)
        assert [j["state"] for j in jobs] == ["not_applicable", "not_applicable"]
        retried = client.post(f"/api/jobs/{jobs[0]['id']}/retry")
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        assert _settled(client, run_id)[0]["state"] == "not_applicable"


def test_a_run_scope_job_whose_checkpoints_went_away_waits_instead_of_failing(
    make_settings,
) -> None:
    from phaseboard.server.jobs.runner import JobRunner

    settings = fast_settings(make_settings, queue="local")
    body = {"name": "shrinks", "task": "dln", "task_config": TINY_TASK}
    body["analysis_config"] = {"analyses": []}  # nothing automatic: only the job below
    app = create_app(settings, start_workers=False)
    with registered(TOY), TestClient(app) as client:
        run_id = client.post("/api/runs", json=body).json()["id"]
        _upload(client, run_id, 1, 0)
        _upload(client, run_id, 10, 1)
        queued = client.post(f"/api/runs/{run_id}/analyses", json={"lenses": ["toy_count"]})
        assert queued.json()["queued"] == 1 and queued.json()["waiting"] == {}
        (job_id,) = queued.json()["job_ids"]
        first = client.get(f"/api/runs/{run_id}/checkpoints").json()[0]["id"]
        assert client.delete(f"/api/checkpoints/{first}").status_code == 204
        runner = JobRunner(settings, app.state.db, app.state.store, "cpu")
        assert runner.run_job(job_id)
        job = client.get(f"/api/jobs/{job_id}").json()
        assert (job["state"], job["progress_msg"]) == ("waiting", "waiting for a 2nd checkpoint")
        _upload(client, run_id, 100, 2)  # the run has two again: queued, and it runs
        assert client.get(f"/api/jobs/{job_id}").json()["state"] == "queued"
        assert runner.run_job(job_id)
        assert client.get(f"/api/jobs/{job_id}").json()["state"] == "done"
        with app.state.db.session() as s:
            assert s.scalar(sa.select(sa.func.count(Job.id))) == 1


@SQLITE
def test_analyses_take_lenses_or_kinds_and_name_unknown_lenses(make_settings) -> None:
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        body = {"name": "k", "task": "dln", "task_config": TINY_TASK}
        run_id = client.post("/api/runs", json=body).json()["id"]
        _upload(client, run_id, 1, 0)
        url = f"/api/runs/{run_id}/analyses"
        by_kinds = client.post(url, json={"kinds": ["learning_order"]})
        by_lenses = client.post(url, json={"lenses": ["learning_order"]})
        assert by_kinds.status_code == by_lenses.status_code == 202
        assert by_kinds.json()["job_ids"] == by_lenses.json()["job_ids"]
        assert by_lenses.json()["waiting"] == {"learning_order": "waiting for a 2nd checkpoint"}
        assert by_lenses.json()["queued"] == 0
        both = client.post(url, json={"lenses": ["llc"], "kinds": ["metrics"]})
        assert both.status_code == 422 and "not both" in both.text
        unknown = client.post(url, json={"lenses": ["llc", "telepathy"]})
        assert unknown.status_code == 422
        assert "telepathy" in unknown.text and "essential_dynamics" in unknown.text
        assert "noop" not in unknown.text  # internal lenses are not advertised


NOT_FINITE = Lens(
    name="toy_not_finite",
    title="toy (not finite)",
    scope="run",
    description="Returns NaN and infinities (a test lens).",
    handler=lambda ctx: [
        {"restriction": "", "values": {"nan": float("nan"), "xs": [1.0, float("inf")], "ok": 2}}
    ],
    min_checkpoints=0,
)


def test_non_finite_result_values_are_stored_as_null_on_either_database(make_settings) -> None:
    from phaseboard.server.jobs.runner import JobRunner

    settings = fast_settings(make_settings, queue="local")
    app = create_app(settings, start_workers=False)
    with registered(NOT_FINITE), TestClient(app) as client:
        body = {"name": "nan", "task": "dln", "task_config": TINY_TASK}
        run_id = client.post("/api/runs", json=body).json()["id"]
        (job_id,) = client.post(
            f"/api/runs/{run_id}/analyses", json={"lenses": ["toy_not_finite"]}
        ).json()["job_ids"]
        assert JobRunner(settings, app.state.db, app.state.store, "cpu").run_job(job_id)
        assert client.get(f"/api/jobs/{job_id}").json()["state"] == "done"
        (result,) = client.get(f"/api/runs/{run_id}/results").json()["results"]
    assert result["values"] == {"nan": None, "xs": [1.0, None], "ok": 2}
