"""A run whose checkpoints arrive one at a time, through the real job path.

``grow(case, home)`` starts an app on a fresh SQLite store (or the given database) with the
local worker pool, creates a run of the case's task asking for every lens a new checkpoint
queues, uploads the case's token data, then uploads the checkpoints one by one through the
API, letting the workers settle after each; after the first it also asks for a calibration.
It returns what the API says after the first checkpoint and at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from phaseboard.analysis.checkpoints import save_safetensors_bytes
from phaseboard.server.app import create_app
from phaseboard.server.lenses import all_lenses
from phaseboard.server.migrate import upgrade
from phaseboard.server.settings import Settings
from tests.conformance.cases import MODEL_FACTORIES, STEPS, Case, npy

# Tiny sampler settings: the matrix checks that every lens runs, not what it finds.
ANALYSIS: dict[str, Any] = {
    "llc": {"num_chains": 2, "num_draws": 4, "batch_size": 16, "lr": 1e-4},
    "metrics": {"hutchinson_samples": 1},
    "essential_dynamics": {"probe_examples": 16},
    "learning_order": {"probe_examples": 32},
}
CALIBRATION = {"lrs": [1e-5, 1e-4], "localizations": [100.0]}
SETTLE_TIMEOUT_S = 300.0


@dataclass
class Snapshot:
    """What the API says about the run at one moment."""

    jobs: list[dict[str, Any]]
    states: dict[str, dict[str, Any]]
    results: list[dict[str, Any]]
    lenses: dict[str, Any]
    page: str  # the run page's HTML


@dataclass
class Outcome:
    run_id: int
    after_first: Snapshot
    final: Snapshot


def checkpoint_lenses() -> list[str]:
    """Every lens a new checkpoint queues (per checkpoint, or rerun as checkpoints arrive)."""
    return [lens.name for lens in all_lenses(internal=False) if lens.queued_on_checkpoint]


def settings_for(home: Path, database_url: str | None = None) -> Settings:
    return Settings(
        home=home,
        database_url=database_url or f"sqlite:///{home / 'phaseboard.db'}",
        storage_dir=home / "blobs",
        queue="local",
        local_workers=1,
        local_fast_workers=1,
        heartbeat_s=0.5,
        model_factories=MODEL_FACTORIES,
        allowed_hosts="testserver",  # the Host header Starlette's TestClient sends
    )  # type: ignore[call-arg]


def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


def settle(client: TestClient, run_id: int) -> None:
    """Wait until no job of the run is queued or running, twice half a second apart (a
    finished lens queues phases just after it finishes)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    quiet = 0
    while quiet < 2:
        jobs = _ok(client.get("/api/jobs", params={"run_id": run_id}))
        busy = jobs["counts"]["queued"] + jobs["counts"]["running"]
        quiet = quiet + 1 if busy == 0 else 0
        if time.monotonic() > deadline:
            table = [(j["id"], j["kind"], j["state"], j["progress_msg"]) for j in jobs["jobs"]]
            raise AssertionError(f"jobs did not settle: {table}")
        time.sleep(0.5 if busy == 0 else 0.2)


def snapshot(client: TestClient, run_id: int) -> Snapshot:
    jobs = _ok(client.get("/api/jobs", params={"run_id": run_id, "limit": 5000}))["jobs"]
    lenses = _ok(client.get(f"/api/runs/{run_id}/lenses"))
    results = _ok(client.get(f"/api/runs/{run_id}/results"))["results"]
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200, page.text
    return Snapshot(jobs, lenses["states"], results, lenses, page.text)


def grow(case: Case, home: Path, database_url: str | None = None) -> Outcome:
    settings = settings_for(home, database_url)
    upgrade(settings)
    weights = case.checkpoints(STEPS)
    with TestClient(create_app(settings)) as client:
        body = {
            "name": f"conformance-{case.id}",
            "task": case.task,
            "task_config": case.config,
            "analysis_config": {**ANALYSIS, "analyses": checkpoint_lenses()},
        }
        run_id = _ok(client.post("/api/runs", json=body), 201)["id"]
        for name, array in case.datasets.items():
            files = {"file": (f"{name}.npy", npy(array))}
            _ok(client.post(f"/api/runs/{run_id}/datasets", files=files, data={"name": name}), 201)
        first: Snapshot | None = None
        for step, state in zip(STEPS, weights, strict=True):
            files = {"file": ("model.safetensors", save_safetensors_bytes(state))}
            url = f"/api/runs/{run_id}/checkpoints"
            _ok(client.post(url, files=files, data={"step": str(step)}), 201)
            settle(client, run_id)
            if first is None:
                body = {"lenses": ["calibrate"], "calibrate": CALIBRATION}
                _ok(client.post(f"/api/runs/{run_id}/analyses", json=body), 202)
                settle(client, run_id)
                first = snapshot(client, run_id)
        assert first is not None
        return Outcome(run_id, first, snapshot(client, run_id))
