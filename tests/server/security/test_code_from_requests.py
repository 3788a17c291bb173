"""No request names code that runs: every route that takes a task config refuses a factory the
operator did not install, with a 422 naming the allowed ones, and never imports it.

Each attempt carries a command that would create a marker file; the marker must never appear
(on SQLite and PostgreSQL: the ``client`` fixture runs on both).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.jobs.runner import JobRunner
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import open_blob_store
from tests.server.conftest import safetensors_bytes

USER = "tests.server.security.user_models"


def attacks(marker: Path) -> list[dict[str, Any]]:
    """Task configs that would create ``marker`` if their factory were imported and called."""
    touch = f"touch {marker}"
    return [
        {"factory": "os:system", "kwargs": {"command": touch}},
        {"factory": "posix:system", "kwargs": {"command": touch}},
        {"factory": "subprocess:run", "kwargs": {"args": ["touch", str(marker)]}},
        {"factory": "subprocess:getoutput", "kwargs": {"cmd": touch}},
        {"factory": "builtins:exec", "kwargs": {"source": f"open({str(marker)!r}, 'w')"}},
        {"factory": "os.path:os.system", "kwargs": {"command": touch}},
        {"factory": f"{USER}:system", "kwargs": {"command": touch}},  # imported, not its own
        {"factory": f"{USER}:make_mlp.__globals__", "kwargs": {}},
        {"factory": f"{USER}:make_mlp", "loss": "mse", "data_factory": "os:system",
         "data_kwargs": {"command": touch}},
    ]  # fmt: skip


def _ids(configs: list[dict[str, Any]]) -> list[str]:
    return [c.get("data_factory") or c["factory"] for c in configs]


def _assert_refused(resp: Any, marker: Path) -> None:
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "not an installed model factory" in detail and "was not imported" in detail, detail
    assert "phaseboard.models" in detail and "PHASEBOARD_MODEL_FACTORIES" in detail
    assert f"patterns: {USER}:make_*" in detail  # names what is allowed
    assert not marker.exists()


@pytest.fixture
def allowing(make_settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """An app whose operator allows the test package's ``make_*`` factories."""
    with TestClient(create_app(make_settings(model_factories=f"{USER}:make_*"))) as c:
        yield c


def test_run_creation_refuses_every_code_naming_factory(allowing: TestClient, tmp_path) -> None:
    marker = tmp_path / "pwned"
    for i, config in enumerate(attacks(marker)):
        body = {"name": f"r{i}", "task": "torch_module", "task_config": config}
        _assert_refused(allowing.post("/api/runs", json=body), marker)
    assert allowing.get("/api/runs").json() == []


def test_patch_refuses_a_factory_in_the_config_or_arriving_with_the_task(
    allowing: TestClient, tmp_path
) -> None:
    marker = tmp_path / "pwned"
    parked = allowing.post("/api/runs", json={"name": "parked"}).json()["id"]
    good = {"factory": f"{USER}:make_mlp"}
    tasked = allowing.post(
        "/api/runs", json={"name": "tasked", "task": "torch_module", "task_config": good}
    )
    assert tasked.status_code == 201, tasked.text
    for config in attacks(marker):
        # a config sent alone onto a torch_module run
        _assert_refused(
            allowing.patch(f"/api/runs/{tasked.json()['id']}", json={"task_config": config}),
            marker,
        )
        # the task and the config together onto a run without a task
        body = {"task": "torch_module", "task_config": config}
        _assert_refused(allowing.patch(f"/api/runs/{parked}", json=body), marker)
    # a config stored while the run had no task is checked when the task arrives
    allowing.patch(f"/api/runs/{parked}", json={"task_config": attacks(marker)[0]})
    _assert_refused(allowing.patch(f"/api/runs/{parked}", json={"task": "torch_module"}), marker)
    assert allowing.get(f"/api/runs/{tasked.json()['id']}").json()["task_config"] == good


def test_the_run_header_form_refuses_code_naming_factories(allowing: TestClient, tmp_path) -> None:
    marker = tmp_path / "pwned"
    run_id = allowing.post("/api/runs", json={"name": "r"}).json()["id"]
    for config in attacks(marker):
        form = {"task": "torch_module", "task_config": json.dumps(config), "tags": "", "notes": ""}
        _assert_refused(allowing.patch(f"/runs/{run_id}/header", data=form), marker)
    assert allowing.get(f"/api/runs/{run_id}").json()["task"] is None


def test_no_factory_is_allowed_by_default(client: TestClient) -> None:
    body = {"name": "r", "task": "torch_module", "task_config": {"factory": f"{USER}:make_mlp"}}
    resp = client.post("/api/runs", json=body)
    assert resp.status_code == 422, resp.text
    assert "entry points in group 'phaseboard.models': (none)" in resp.json()["detail"]
    assert "patterns: (none)" in resp.json()["detail"]


@pytest.mark.parametrize("pattern", ["*:*", "os:*", "*", "subprocess.*:run", "builtins:exec"])
def test_a_pattern_that_reaches_beyond_model_packages_stops_the_server(
    make_settings, pattern: str
) -> None:
    with pytest.raises(ValueError, match="PHASEBOARD_MODEL_FACTORIES"):
        create_app(make_settings(model_factories=pattern))


@pytest.fixture
def model_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution whose ``phaseboard.models`` entry point names ``make_mlp``."""
    dist = tmp_path / "site" / "lab_models-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[phaseboard.models]\nlab_mlp = {USER}:make_mlp\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return "lab_mlp"


def test_an_installed_entry_point_is_accepted_and_checked_at_upload(
    client: TestClient, model_entry_point: str
) -> None:
    for factory in (model_entry_point, f"{USER}:make_mlp"):  # by name or by its target
        body = {"name": factory, "task": "torch_module", "task_config": {"factory": factory}}
        resp = client.post("/api/runs", json=body)
        assert resp.status_code == 201, resp.text
    from tests.server.security.user_models import make_mlp

    files = {"file": ("w.pt", _torch_bytes(make_mlp().state_dict()), "application/octet-stream")}
    run_id = resp.json()["id"]
    up = client.post(f"/api/runs/{run_id}/checkpoints", files=files, data={"step": "1"})
    assert up.status_code == 201, up.text
    wrong = client.post(
        f"/api/runs/{run_id}/checkpoints",
        files={"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")},
        data={"step": "2"},
    )  # the model was built from the entry point: a checkpoint of another shape is refused
    assert wrong.status_code == 422 and "does not fit the task's model" in wrong.text


def _torch_bytes(obj: Any) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _store_config_behind_the_api(settings: Settings, run_id: int, config: dict) -> None:
    """What an older version may have stored: the row written without today's checks."""
    engine = sa.create_engine(
        settings.database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE runs SET task = 'torch_module', task_config = :c WHERE id = :id"),
            {"c": json.dumps(config), "id": run_id},
        )
    engine.dispose()


def test_a_stored_code_naming_config_is_refused_at_upload_and_in_the_worker(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    run_id = client.post("/api/runs", json={"name": "old"}).json()["id"]
    files = {"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")}
    first = client.post(f"/api/runs/{run_id}/checkpoints", files=files, data={"step": "1"})
    assert first.status_code == 201, first.text
    for config in attacks(marker):
        _store_config_behind_the_api(settings, run_id, config)
        up = client.post(f"/api/runs/{run_id}/checkpoints", files=files, data={"step": "2"})
        assert up.status_code == 422, up.text  # the API builds the model: checked first
        assert "not an installed model factory" in up.json()["detail"]
        assert not marker.exists()

        queued = client.post(f"/api/runs/{run_id}/analyses", json={"kinds": ["metrics"]})
        assert queued.status_code == 202, queued.text
        db = Database(settings)
        try:
            runner = JobRunner(settings, db, open_blob_store(settings), "cpu")
            for job_id in queued.json()["job_ids"]:
                runner.run_job(job_id)
        finally:
            db.dispose()
        for job_id in queued.json()["job_ids"]:
            job = client.get(f"/api/jobs/{job_id}").json()
            assert job["state"] == "failed", job
            assert "not an installed model factory" in job["error"], job["error"]
        assert not marker.exists()


def test_the_python_client_and_ingest_get_the_refusal(tmp_path: Path) -> None:
    """The client and ``phaseboard ingest`` reach the server through the same routes."""
    from phaseboard import Phaseboard
    from phaseboard.server.commands.ingest_dir import ingest_directory
    from tests.live_server import serve

    marker = tmp_path / "pwned"
    config = attacks(marker)[0]
    with serve(tmp_path / "home") as url:
        client = Phaseboard(url)
        with pytest.raises(Exception, match="not an installed model factory"):
            client.run("via-client", task="torch_module", task_config=config)
        (tmp_path / "ckpts").mkdir()
        with pytest.raises(Exception, match="not an installed model factory"):
            ingest_directory(
                tmp_path / "ckpts", "via-ingest", client, task="torch_module", task_config=config
            )
        client.close()
    assert not marker.exists()
