"""Token datasets: upload (.npy, safetensors, .pt), listing, refusals that store nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import save

from phaseboard.server.blob_gc import collect_garbage
from phaseboard.server.db import Database
from phaseboard.server.storage import BlobStore


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=array.dtype == object)
    return buf.getvalue()


def _pt(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _post(client, run_id: int, name: str | None, data: bytes, filename: str = "t.npy"):  # type: ignore[no-untyped-def]
    form = {} if name is None else {"name": name}
    return client.post(f"/api/runs/{run_id}/datasets", files={"file": (filename, data)}, data=form)


def _dataset_rows(settings) -> int:  # type: ignore[no-untyped-def]
    db = Database(settings)
    try:
        with db.session() as s:
            return s.execute(sa.text("SELECT count(*) FROM datasets")).scalar_one()
    finally:
        db.dispose()


def test_token_files_upload_in_three_formats_and_are_listed(client, run_id: int) -> None:  # type: ignore[no-untyped-def]
    stream = np.arange(1000, dtype=np.uint16) % 50
    first = _post(client, run_id, "train", _npy(stream))
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["name"], body["n_tokens"], body["shape"], body["dtype"]) == (
        "train", 1000, [1000], "uint16"
    )  # fmt: skip
    assert body["max_token"] == 49 and body["format"] == "npy"
    rows = torch.arange(64).view(4, 16)
    assert (
        _post(client, run_id, "test", save({"input_ids": rows}), "t.safetensors").status_code == 201
    )
    assert _post(client, run_id, "code", _pt({"tokens": rows}), "t.pt").status_code == 201
    listed = client.get(f"/api/runs/{run_id}/datasets").json()
    assert [(d["name"], d["format"], d["shape"]) for d in listed] == [
        ("code", "torch", [4, 16]),
        ("test", "safetensors", [4, 16]),
        ("train", "npy", [1000]),
    ]


BAD = {
    "pickled object array": (_npy(np.array([{"a": 1}], dtype=object)), 422, "without pickle"),
    "floats": (_npy(np.zeros(10, dtype=np.float32)), 422, "must be integers"),
    "pickle with code": (_pt({"tokens": torch.arange(3), "f": print}), 422, "builtins.print"),
    "garbage": (b"not a tensor file", 422, "not token data"),
    "empty": (b"", 422, "empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_token_files_are_refused_and_nothing_is_stored(
    client, run_id, settings, snapshot, case
) -> None:  # type: ignore[no-untyped-def]
    before = snapshot()
    data, status, message = BAD[case]
    resp = _post(client, run_id, "train", data)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["detail"]
    assert snapshot().blobs == before.blobs
    assert _dataset_rows(settings) == 0


def test_bad_names_duplicates_unknown_runs_and_vocab_overflow_are_4xx(
    client, run_id, settings, snapshot
) -> None:  # type: ignore[no-untyped-def]
    good = _npy(np.arange(100) % 7)
    assert _post(client, run_id, None, good).status_code == 422
    assert "'name'" in _post(client, run_id, None, good).json()["detail"]
    assert _post(client, run_id, "../etc", good).status_code == 422
    assert _post(client, 99999, "train", good).status_code == 404
    assert _post(client, run_id, "train", good).status_code == 201
    before = snapshot()
    again = _post(client, run_id, "train", _npy(np.arange(100) % 5))
    assert again.status_code == 409 and "already has a dataset named 'train'" in again.text
    run = client.post(
        "/api/runs",
        json={
            "name": "lm",
            "task": "hf_causal_lm",
            "task_config": {"hf_config": {"vocab_size": 5}},
        },
    ).json()
    over = _post(client, run["id"], "train", _npy(np.arange(10)))
    assert (
        over.status_code == 422 and "token id 9 is outside the model's vocabulary of 5" in over.text
    )
    assert snapshot().blobs == before.blobs and _dataset_rows(settings) == 1


def test_garbage_collection_keeps_dataset_blobs(client, run_id, settings) -> None:  # type: ignore[no-untyped-def]
    sha = _post(client, run_id, "train", _npy(np.arange(10))).json()["sha256"]
    db = Database(settings)
    try:
        report = collect_garbage(db, BlobStore(settings.storage_dir), min_age_s=0)
    finally:
        db.dispose()
    assert sha not in report.removed and BlobStore(settings.storage_dir).exists(sha)
