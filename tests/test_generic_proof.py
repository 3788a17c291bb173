"""Proof that a user's own Hugging Face run is analysed end to end, no Task class written.

Tiny GPT-2, GPT-NeoX and Llama models are built locally from configs (random init, no hub),
trained a few steps and saved as ``checkpoint-N/`` folders exactly as a ``Trainer`` leaves
them. ``phaseboard ingest DIR --data train=... --data test=... --data code=...`` imports them
into a live server whose local worker pool then computes metrics, the LLC, per-head
restricted LLCs, a data-restricted LLC and the progress measures (ICL score, per-head prefix
matching) through the real job path (SQLite), and once more on PostgreSQL through the upload
API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save
from typer.testing import CliRunner

from phaseboard import Phaseboard
from phaseboard.server.app import create_app
from phaseboard.server.commands.cli import app
from tests.generic_models import HF_CONFIGS, hf_model, save_trainer_checkpoint, token_stream
from tests.generic_models import train_steps as train
from tests.live_server import serve

pytestmark = pytest.mark.slow

ANALYSIS = {
    "analyses": ["metrics", "llc", "llc_restricted"],
    "llc": {"num_chains": 2, "num_draws": 5, "batch_size": 8, "lr": 1e-4},
    "metrics": {"hutchinson_samples": 2},
}
HEADS = [f"weights:l{i}.h{h}" for i in range(2) for h in range(4)]


def _trainer_dir(root: Path, family: str) -> Path:
    """checkpoint-0 (init) and checkpoint-8 (after 8 AdamW steps), plus token files."""
    out = root / family
    model = hf_model(family)
    save_trainer_checkpoint(model, out, 0)
    train(model, token_stream(3000), steps=8)
    save_trainer_checkpoint(model, out, 8)
    np.save(root / "train.npy", token_stream(2000).numpy().astype(np.int32))
    np.save(root / "test.npy", token_stream(400, seed=1).numpy().reshape(25, 16))
    np.save(root / "code.npy", token_stream(400, seed=2).numpy())
    return out


def _wait(get_jobs: Any, want: int, timeout: float = 240.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = get_jobs()
        final = [j for j in jobs if j["state"] in ("done", "failed", "cancelled")]
        if len(jobs) >= want and len(final) == len(jobs):
            return jobs
        if time.monotonic() > deadline:
            pytest.fail(f"jobs not finished: {[(j['kind'], j['state'], j['error']) for j in jobs]}")
        time.sleep(0.2)


def _check_results(results: list[dict[str, Any]]) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    llc = by_kind["llc"]
    assert sorted(r["step"] for r in llc) == [0, 8]
    assert all(np.isfinite(r["values"]["mean"]) and len(r["values"]["per_chain"]) == 2 for r in llc)
    restricted = {(r["step"], r["restriction"]): r["values"] for r in by_kind["llc_restricted"]}
    for step in (0, 8):
        assert all((step, h) in restricted for h in HEADS), sorted(restricted)
        assert (step, "data:code") in restricted and (step, "weights:l1") in restricted
        assert all(np.isfinite(restricted[(step, h)]["mean"]) for h in HEADS)
        head, whole = restricted[(step, "weights:l0.h0")], restricted[(step, "weights:l0")]
        assert 0 < head["num_params_free"] < whole["num_params_free"]
    metrics = {r["step"]: r["values"] for r in by_kind["metrics"]}
    assert sorted(metrics) == [0, 8]
    # 8 steps of training on a learnable stream lower the held-out loss.
    assert metrics[8]["test_loss"] < metrics[0]["test_loss"]
    assert metrics[8]["distance_from_init"] > 0
    # The task's progress measures: the ICL score and every head's prefix matching.
    heads = [f"progress/prefix_matching/{h.removeprefix('weights:')}" for h in HEADS]
    for values in metrics.values():
        assert np.isfinite(values["progress/icl_score"])
        assert all(0 <= values[h] <= 1 for h in heads)
        assert values["progress/prefix_matching"] == max(values[h] for h in heads)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("generic"), queue="local") as u:
        yield u


@pytest.mark.parametrize("family", list(HF_CONFIGS))
def test_trainer_folders_ingest_and_get_llc_per_head_llc_and_metrics(
    url: str, tmp_path: Path, family: str
) -> None:
    run_dir = _trainer_dir(tmp_path, family)
    name = f"hf-{family}"
    with Phaseboard(url) as pb:  # small SGLD settings so the test takes seconds
        pb.run(name, analysis_config=ANALYSIS)
    args = ["ingest", str(run_dir), "--run", name, "--url", url]
    for split in ("train", "test", "code"):
        args += ["--data", f"{split}={tmp_path / f'{split}.npy'}"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "task hf_causal_lm" in " ".join(out.output.split())
    assert "datasets: 3 imported" in out.output and "checkpoints: 2 imported" in out.output

    with Phaseboard(url) as pb:
        run = pb.run(name)
        assert run.data["task"] == "hf_causal_lm"
        assert run.data["task_config"]["hf_config"]["model_type"] == family
        jobs = _wait(lambda: run.jobs()["jobs"], want=6)
        assert all(j["state"] == "done" for j in jobs), [(j["kind"], j["error"]) for j in jobs]
        _check_results(run.results()["results"])


@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_upload_api_to_per_head_results(make_settings, tmp_path: Path) -> None:
    """The same path on PostgreSQL, through the upload API (GPT-NeoX)."""
    settings = make_settings(queue="local")
    run_dir = _trainer_dir(tmp_path, "gpt_neox")
    with TestClient(create_app(settings)) as client:
        config = {"hf_config": HF_CONFIGS["gpt_neox"], "seq_len": 16}
        body = {"name": "neox-pg", "task": "hf_causal_lm", "task_config": config}
        run_id = client.post("/api/runs", json={**body, "analysis_config": ANALYSIS}).json()["id"]
        for split in ("train", "test", "code"):
            data = (tmp_path / f"{split}.npy").read_bytes()
            resp = client.post(
                f"/api/runs/{run_id}/datasets",
                files={"file": ("t.npy", data)},
                data={"name": split},
            )
            assert resp.status_code == 201, resp.text
        for step in (0, 8):
            weights = (run_dir / f"checkpoint-{step}" / "model.safetensors").read_bytes()
            resp = client.post(
                f"/api/runs/{run_id}/checkpoints",
                files={"file": ("model.safetensors", weights)},
                data={"step": str(step)},
            )
            assert resp.status_code == 201, resp.text

        def jobs() -> list[dict[str, Any]]:
            return client.get("/api/jobs", params={"run_id": run_id}).json()["jobs"]

        done = _wait(jobs, want=6)
        assert all(j["state"] == "done" for j in done), [(j["kind"], j["error"]) for j in done]
        _check_results(client.get(f"/api/runs/{run_id}/results").json()["results"])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_run_without_train_data_fails_its_jobs_saying_what_to_upload(make_settings) -> None:
    settings = make_settings(queue="local")
    weights = save({k: v.contiguous() for k, v in hf_model("llama").state_dict().items()})
    with TestClient(create_app(settings)) as client:
        body = {"name": "no-data", "task": "hf_causal_lm"}
        body["task_config"] = {"hf_config": HF_CONFIGS["llama"]}
        body["analysis_config"] = {**ANALYSIS, "analyses": ["llc"]}
        run_id = client.post("/api/runs", json=body).json()["id"]
        resp = client.post(
            f"/api/runs/{run_id}/checkpoints", files={"file": ("m.safetensors", weights)},
            data={"step": "1"},
        )  # fmt: skip
        assert resp.status_code == 201, resp.text

        (job,) = _wait(lambda: client.get("/api/jobs", params={"run_id": run_id}).json()["jobs"], 1)
    assert job["state"] == "failed"
    assert "needs a token dataset named 'train'" in job["error"]
