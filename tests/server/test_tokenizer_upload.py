"""A run's tokenizer.json: stored once per run (replaced by a new one), refused with a clear
4xx and nothing stored when it is not one or too large, kept by garbage collection."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.blob_gc import collect_garbage
from phaseboard.server.db import Database
from phaseboard.server.storage import BlobStore
from tests.tiny_tokenizer import VOCAB, tokenizer_json


def _put(client, run_id: int, data: bytes):  # type: ignore[no-untyped-def]
    return client.put(f"/api/runs/{run_id}/tokenizer", files={"file": ("tokenizer.json", data)})


def _rows(settings) -> int:  # type: ignore[no-untyped-def]
    db = Database(settings)
    try:
        with db.session() as s:
            return s.execute(sa.text("SELECT count(*) FROM tokenizers")).scalar_one()
    finally:
        db.dispose()


def test_a_tokenizer_is_stored_read_back_replaced_and_kept_by_gc(client, run_id, settings) -> None:  # type: ignore[no-untyped-def]
    assert client.get(f"/api/runs/{run_id}/tokenizer").status_code == 404
    first = _put(client, run_id, tokenizer_json().encode())
    assert first.status_code == 201, first.text
    assert first.json()["vocab_size"] == VOCAB
    assert client.get(f"/api/runs/{run_id}/tokenizer").json()["sha256"] == first.json()["sha256"]
    smaller = _put(client, run_id, tokenizer_json(280).encode())
    assert smaller.status_code == 201 and smaller.json()["vocab_size"] == 280
    assert _rows(settings) == 1  # replaced, not added
    db = Database(settings)
    try:
        report = collect_garbage(db, BlobStore(settings.storage_dir), min_age_s=0)
    finally:
        db.dispose()
    assert smaller.json()["sha256"] not in report.removed
    assert first.json()["sha256"] in report.removed  # the replaced one is nobody's now
    assert client.delete(f"/api/runs/{run_id}/tokenizer").status_code == 204
    assert client.get(f"/api/runs/{run_id}/tokenizer").status_code == 404


BAD = {
    "not json": (b"vocab: [a, b]", "not JSON"),
    "a json list": (b"[1, 2, 3]", "not a Hugging Face tokenizer.json"),
    "a broken model": (json.dumps({"model": {"type": "BPE", "vocab": 3}}).encode(), "cannot read"),
    "binary": (b"\x80\x81\xfe", "not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_tokenizer_file_is_422_and_nothing_is_stored(
    client, run_id, settings, snapshot, case
) -> None:  # type: ignore[no-untyped-def]
    before = snapshot()
    data, message = BAD[case]
    resp = _put(client, run_id, data)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert message in detail and "nothing was stored" in detail
    assert snapshot().blobs == before.blobs and _rows(settings) == 0


def test_an_oversized_tokenizer_is_413_naming_the_setting(make_settings, snapshot) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(max_tokenizer_mb=1)
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json={"name": "big"}).json()["id"]
        before = snapshot()
        resp = _put(client, run_id, b" " * (3 * 1024 * 1024))
        assert resp.status_code == 413, resp.text
        assert "PHASEBOARD_MAX_TOKENIZER_MB" in resp.json()["detail"]
        assert _put(client, 99999, tokenizer_json().encode()).status_code == 404
    assert snapshot().blobs == before.blobs and _rows(settings) == 0
