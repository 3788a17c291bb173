"""Checkpoints as they come, through the API on SQLite and PostgreSQL: Lightning / DDP /
torch.compile / EMA layouts upload with their key mapping and analyse; misfits and costly
files are refused at upload with nothing stored."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from safetensors.torch import load as load_safetensors_bytes

from phaseboard.analysis.checkpoints import save_safetensors_bytes
from phaseboard.server.db import Database
from phaseboard.server.jobs.runner import JobRunner
from phaseboard.server.storage import BlobStore
from tests.analysis.test_checkpoint_layouts import (
    _deep_dict_pickle,
    _torch_zip_with_pickle,
    lightning_checkpoint,
)
from tests.server.jobs.conftest import TINY_LLC, TINY_TASK, state_dict


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _upload(client, run_id: int, data: bytes, step: int, name: str):  # type: ignore[no-untyped-def]
    return client.post(
        f"/api/runs/{run_id}/checkpoints", files={"file": (name, data)}, data={"step": str(step)}
    )


def _dln_run(client, name: str = "own") -> int:  # type: ignore[no-untyped-def]
    resp = client.post("/api/runs", json={"name": name, "task": "dln", "task_config": TINY_TASK})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _lightning() -> dict:
    ckpt = lightning_checkpoint()
    ckpt["state_dict"] = {f"model.{k}": v for k, v in state_dict(0).items()}
    return ckpt


def _layouts() -> dict[str, tuple[bytes, str, dict]]:
    sd = state_dict(1)
    return {
        "lightning": (
            _torch_bytes(_lightning()),
            "epoch=3-step=120.ckpt",
            {"nesting": "state_dict", "strip_prefix": "model."},
        ),
        "ddp": (
            _torch_bytes({f"module.{k}": v for k, v in sd.items()}),
            "ddp.pt",
            {"nesting": None, "strip_prefix": "module."},
        ),
        "compiled": (
            save_safetensors_bytes({f"_orig_mod.{k}": v for k, v in sd.items()}),
            "step_2.safetensors",
            {"nesting": None, "strip_prefix": "_orig_mod."},
        ),
        "ema_only": (
            _torch_bytes({"ema": sd, "step": 3, "optimizer": {"state": {}, "param_groups": []}}),
            "ema.pt",
            {"nesting": "ema", "strip_prefix": ""},
        ),
    }


@pytest.mark.slow
def test_own_layouts_upload_with_their_mapping_and_analyse(client, settings) -> None:
    run_id = _dln_run(client)
    ids = []
    for step, (layout, (data, name, want)) in enumerate(_layouts().items()):
        resp = _upload(client, run_id, data, step, name)
        assert resp.status_code == 201, (layout, resp.text)
        body = resp.json()
        assert {k: body["key_mapping"][k] for k in want} == want, layout
        assert body["status"] == "ok" and body["n_tensors"] == len(state_dict(0))
        ids.append(body["id"])
    lightning = client.get(f"/api/checkpoints/{ids[0]}").json()
    assert "optimizer_states" in lightning["key_mapping"]["dropped"]
    assert "dropped optimizer_states, " in lightning["mapping"]
    assert "(weights only kept)" in lightning["mapping"]
    # the blob holds the weights alone, as safetensors (names as in the file)
    stored = load_safetensors_bytes(client.get(lightning["download_url"]).content)
    assert set(stored) == {f"model.{k}" for k in state_dict(0)}
    page = client.get(f"/runs/{run_id}").text
    assert "stripped &#39;module.&#39;" in page and "weights from &#39;ema&#39;" in page

    queued = client.post(
        f"/api/runs/{run_id}/analyses", json={"kinds": ["metrics", "llc"], "llc": TINY_LLC}
    )
    assert queued.status_code == 202, queued.text
    db = Database(settings)
    try:
        runner = JobRunner(settings, db, BlobStore(settings.storage_dir), "cpu")
        for job_id in queued.json()["job_ids"]:
            runner.run_job(job_id)
    finally:
        db.dispose()
    jobs = [client.get(f"/api/jobs/{j}").json() for j in queued.json()["job_ids"]]
    assert {(j["kind"], j["state"], j["error"]) for j in jobs} == {
        ("metrics", "done", None),
        ("llc", "done", None),
    }
    assert len(jobs) == 2 * len(ids)
    llc = client.get(f"/api/runs/{run_id}/llc").json()["points"]
    assert len(llc) == len(ids)


def test_checkpoint_that_cannot_fit_the_task_is_refused_naming_tensors(client, snapshot) -> None:
    tasked = _dln_run(client)
    before = snapshot()
    wrong = state_dict(0, widths=[4, 3, 2])
    wrong["head.weight"] = torch.zeros(2)
    resp = _upload(client, tasked, save_safetensors_bytes(wrong), 1, "w.safetensors")
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "1 unexpected: head.weight" in detail
    assert "with the wrong shape: layers.0.weight [3, 4] vs model [3, 3]" in detail
    assert "nothing was stored" in detail
    assert snapshot() == before


def _shared_children() -> bytes:
    x: dict = {}
    for _ in range(40):
        x = {"a": x, "b": x}
    return _torch_bytes({"w": torch.ones(1), "x": x})


def _self_referencing() -> bytes:
    d: dict = {"w": torch.ones(1)}
    d["self"] = d
    return _torch_bytes(d)


def _zip_bomb() -> bytes:  # 2 MB of padding after the pickle's STOP, deflated to ~2 KB
    pkl = pickle.dumps({"w": 1}, protocol=2) + b"\0" * (2 * 1024 * 1024)
    return _torch_zip_with_pickle(pkl, compress=True)


@pytest.mark.parametrize(
    "make, needle",
    [
        (_shared_children, "a dict met before"),
        (_self_referencing, "a dict met before"),
        (lambda: _torch_zip_with_pickle(_deep_dict_pickle(5000)), "nested more than 64 deep"),
        (_zip_bomb, "inflate to more than 1048576 bytes"),
        (lambda: b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a":' * 3 + b"1}}}", "corrupt"),
    ],
    ids=["shared_children", "self_reference", "deep_5000", "zip_bomb", "bad_header"],
)
def test_costly_files_are_422_and_leave_nothing_behind(make_settings, make, needle) -> None:
    from fastapi.testclient import TestClient

    from phaseboard.server.app import create_app
    from tests.server.conftest import store_state

    settings = make_settings(checkpoint_max_inflated_mb=1)
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json={"name": "dos"}).json()["id"]
        before = store_state(settings)
        resp = _upload(client, run_id, make(), 1, "x.pt")
        assert resp.status_code == 422, resp.text
        assert needle in resp.json()["detail"]
        assert store_state(settings) == before  # no row, no blob, no temp file
