"""The API with its blobs on S3 (moto's real server): uploads, downloads, duplicates, gc,
and failed or killed uploads that leave no object and no row — on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.blob_gc import collect_garbage
from phaseboard.server.db import Database
from phaseboard.server.settings import Settings
from tests.server.conftest import safetensors_bytes, store_state, tiny_state_dict
from tests.server.live import live_server, settings_env, write_big_safetensors
from tests.server.store.conftest import S3Endpoint


@pytest.fixture
def s3_client(s3_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(s3_settings)) as c:
        yield c


def _run(client: TestClient, name: str = "r") -> int:
    resp = client.post("/api/runs", json={"name": name})
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


def _upload(client: TestClient, run_id: int, data: bytes, step: int, name: str = "c.safetensors"):  # type: ignore[no-untyped-def]
    files = {"file": (name, data)}
    return client.post(f"/api/runs/{run_id}/checkpoints", files=files, data={"step": str(step)})


def _local_files(settings: Settings) -> list[str]:
    """Files under the local blob directory other than the read cache (staging leftovers)."""
    root = Path(settings.storage_dir)  # type: ignore[arg-type]
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "cache" not in p.parts
    )


def test_uploads_land_in_the_bucket_and_download_from_it(
    s3_client: TestClient, s3_settings: Settings, s3_endpoint: S3Endpoint, bucket: str
) -> None:
    rid = _run(s3_client)
    data = safetensors_bytes(1)
    ck = _upload(s3_client, rid, data, 10).json()
    buf = io.BytesIO()
    torch.save({"model": tiny_state_dict(2), "optimizer": {}}, buf)
    pt = _upload(s3_client, rid, buf.getvalue(), 20, "c.pt")
    assert pt.status_code == 201, pt.text
    sha, pt_sha = ck["sha256"], pt.json()["sha256"]
    assert s3_endpoint.blob_keys(bucket) == sorted(
        f"blobs/{s[:2]}/{s[2:4]}/{s}" for s in (sha, pt_sha)
    )
    assert _local_files(s3_settings) == []  # nothing kept on the API's disk
    got = s3_client.get(ck["download_url"])
    assert got.status_code == 200 and got.content == data
    assert 'filename="run' in got.headers["content-disposition"]
    as_pt = s3_client.get(pt.json()["download_url"])  # stored as safetensors of its weights
    assert as_pt.status_code == 200 and as_pt.headers["content-disposition"].endswith(
        '.safetensors"'
    )
    stream = np.arange(500, dtype=np.uint16) % 7
    npy = io.BytesIO()
    np.save(npy, stream)
    ds = s3_client.post(
        f"/api/runs/{rid}/datasets",
        files={"file": ("t.npy", npy.getvalue())},
        data={"name": "train"},
    )
    assert ds.status_code == 201, ds.text
    assert len(s3_endpoint.blob_keys(bucket)) == 3


def test_equal_weights_are_stored_once_and_the_lower_step_flagged(
    s3_client: TestClient, s3_endpoint: S3Endpoint, bucket: str
) -> None:
    rid = _run(s3_client)
    final = safetensors_bytes(7)
    assert _upload(s3_client, rid, final, 3000).status_code == 201  # a mislabelled branch
    assert _upload(s3_client, rid, safetensors_bytes(8), 2000).status_code == 201
    assert _upload(s3_client, rid, final, 143000).status_code == 201
    listed = {c["step"]: c for c in s3_client.get(f"/api/runs/{rid}/checkpoints").json()}
    assert {s: c["duplicate_of_step"] for s, c in listed.items()} == {
        2000: None,
        3000: 143000,
        143000: None,
    }
    assert len(s3_endpoint.blob_keys(bucket)) == 2
    # Deleting the original leaves the other step as the only holder: no longer a duplicate.
    assert s3_client.delete(f"/api/checkpoints/{listed[143000]['id']}").status_code == 204
    again = s3_client.get(f"/api/checkpoints/{listed[3000]['id']}").json()
    assert again["duplicate_of_step"] is None


def test_gc_on_s3_frees_only_unreferenced_blobs(
    s3_client: TestClient, s3_settings: Settings, s3_endpoint: S3Endpoint, bucket: str
) -> None:
    a, b = _run(s3_client, "a"), _run(s3_client, "b")
    shared = _upload(s3_client, a, safetensors_bytes(1), 1).json()["sha256"]
    assert _upload(s3_client, b, safetensors_bytes(1), 1).json()["sha256"] == shared
    only_a = _upload(s3_client, a, safetensors_bytes(2), 2).json()["sha256"]
    assert s3_client.delete(f"/api/runs/{a}").status_code == 204
    store = s3_client.app.state.store  # type: ignore[attr-defined]
    db = Database(s3_settings)
    try:
        spared = collect_garbage(db, store, min_age_s=3600)
        assert spared.removed == [] and spared.kept_recent == 1  # just written: spared
        report = collect_garbage(db, store, min_age_s=0)
    finally:
        db.dispose()
    assert report.removed == [only_a] and report.bytes_freed > 0
    assert s3_endpoint.blob_keys(bucket) == [f"blobs/{shared[:2]}/{shared[2:4]}/{shared}"]


def test_refused_and_failed_uploads_leave_no_object(
    s3_settings: Settings, s3_endpoint: S3Endpoint, bucket: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    with TestClient(create_app(s3_settings), raise_server_exceptions=False) as client:
        rid = _run(client)
        assert _upload(client, rid, b"not a checkpoint at all", 1).status_code == 422
        before = store_state(s3_settings).rows

        def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise RuntimeError("injected failure after the INSERT, before COMMIT")

        monkeypatch.setattr(Session, "refresh", boom)
        assert _upload(client, rid, safetensors_bytes(3), 2).status_code == 500
        monkeypatch.undo()
        assert store_state(s3_settings).rows == before
    assert s3_endpoint.keys(bucket) == []  # the committed object was removed again
    assert _local_files(s3_settings) == []


def test_object_store_down_answers_503_and_stores_nothing(make_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.server.live import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    settings = make_settings(blob_url="s3://gone/blobs")
    with TestClient(create_app(settings)) as client:
        rid = _run(client)
        before = store_state(settings).rows
        resp = _upload(client, rid, safetensors_bytes(), 1)
    assert resp.status_code == 503 and resp.json()["error"] == "storage_unavailable"
    assert "s3://gone/blobs" in resp.json()["detail"]
    assert store_state(settings).rows == before and _local_files(settings) == []


def test_api_killed_mid_multipart_upload_leaves_no_object_and_no_row(
    s3_settings: Settings,
    s3_endpoint: S3Endpoint,
    bucket: str,
    aws_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """kill -9 of the API while it uploads a checkpoint's parts: S3 shows the object only
    when the multipart upload completes, and the row comes after it, so there is neither."""
    big = tmp_path / "big.safetensors"
    write_big_safetensors(big, 96)  # six 16 MiB parts
    env = {**settings_env(s3_settings), "PHASEBOARD_BLOB_URL": s3_settings.blob_url, **aws_env}
    with live_server(env) as server:
        rid = httpx.post(f"{server.url}/api/runs", json={"name": "k"}).json()["id"]
        before = store_state(s3_settings).rows

        def send() -> None:
            with (
                big.open("rb") as fh,
                httpx.Client(timeout=120) as http,
                contextlib.suppress(httpx.HTTPError),  # the server dies under us: expected
            ):
                http.post(
                    f"{server.url}/api/runs/{rid}/checkpoints",
                    files={"file": ("big.safetensors", fh)},
                    data={"step": "1"},
                )

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not s3_endpoint.multipart_uploads(bucket):
            time.sleep(0.005)
        assert s3_endpoint.multipart_uploads(bucket), "the upload never reached S3"
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        sender.join(timeout=30)
    assert s3_endpoint.keys(bucket) == []  # an unfinished multipart upload is no object
    assert store_state(s3_settings).rows == before


def test_gc_command_works_on_the_bucket(
    s3_client: TestClient, s3_settings: Settings, s3_endpoint: S3Endpoint, bucket: str
) -> None:
    from typer.testing import CliRunner

    from phaseboard.server.commands.cli import app as cli

    rid = _run(s3_client, "gone")
    sha = _upload(s3_client, rid, safetensors_bytes(4), 1).json()["sha256"]
    assert s3_client.delete(f"/api/runs/{rid}").status_code == 204
    env = {
        "PHASEBOARD_HOME": str(s3_settings.home),
        "PHASEBOARD_DATABASE_URL": s3_settings.database_url,
        "PHASEBOARD_STORAGE_DIR": str(s3_settings.storage_dir),
        "PHASEBOARD_BLOB_URL": s3_settings.blob_url,
    }
    dry = CliRunner().invoke(cli, ["gc", "--min-age-hours", "0", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "would remove 1 unreferenced blob" in dry.output, dry.output
    assert s3_endpoint.blob_keys(bucket) == [f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"]
    done = CliRunner().invoke(cli, ["gc", "--min-age-hours", "0"], env=env)
    assert done.exit_code == 0 and "removed 1 unreferenced blob" in done.output, done.output
    assert s3_endpoint.keys(bucket) == []
