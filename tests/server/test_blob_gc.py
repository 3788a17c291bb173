"""Blob garbage collection: unreferenced, old blobs go; shared, referenced and recent stay."""

from __future__ import annotations

import os
import time

from typer.testing import CliRunner

from phaseboard.server.blob_gc import collect_garbage
from phaseboard.server.commands.cli import app as cli
from phaseboard.server.db import Database
from phaseboard.server.storage import BlobStore
from phaseboard.server.store.inflight import process_token
from tests.server.conftest import safetensors_bytes


def _upload(client, run_id: int, step: int, data: bytes) -> str:  # type: ignore[no-untyped-def]
    files = {"file": (f"step_{step}.safetensors", data, "application/octet-stream")}
    resp = client.post(f"/api/runs/{run_id}/checkpoints", files=files, data={"step": str(step)})
    assert resp.status_code == 201, resp.text
    return resp.json()["sha256"]


def _age(store: BlobStore, sha: str, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(store.path_for(sha), (old, old))


def test_deleting_a_run_then_gc_frees_only_its_unshared_blobs(client, settings) -> None:
    a = client.post("/api/runs", json={"name": "a"}).json()["id"]
    b = client.post("/api/runs", json={"name": "b"}).json()["id"]
    shared = _upload(client, a, 1, safetensors_bytes(1))
    assert _upload(client, b, 1, safetensors_bytes(1)) == shared
    only_a = _upload(client, a, 2, safetensors_bytes(2))
    only_b = _upload(client, b, 2, safetensors_bytes(3))
    store = BlobStore(settings.storage_dir)
    for sha in (shared, only_a, only_b):
        _age(store, sha, 7200)
    assert client.delete(f"/api/runs/{a}").status_code == 204
    db = Database(settings)
    try:
        dry = collect_garbage(db, store, min_age_s=3600, dry_run=True)
        assert dry.removed == [only_a] and store.exists(only_a)
        report = collect_garbage(db, store, min_age_s=3600)
    finally:
        db.dispose()
    assert report.removed == [only_a] and report.bytes_freed > 0 and report.referenced == 2
    assert sorted(store.blobs()) == sorted([shared, only_b])
    ckpts = client.get(f"/api/runs/{b}/checkpoints").json()
    for c in ckpts:  # run b's checkpoints still download
        assert client.get(f"/api/checkpoints/{c['id']}/download").status_code == 200


def test_gc_right_after_deleting_fresh_uploads_frees_them(client, settings) -> None:
    """After a disk-full the researcher deletes the run that filled it: its blobs are minutes
    old, and gc frees them (it used to spare everything written in the last hour)."""
    run = client.post("/api/runs", json={"name": "r"}).json()["id"]
    shas = [_upload(client, run, step, safetensors_bytes(10 + step)) for step in range(3)]
    client.delete(f"/api/runs/{run}")
    store = BlobStore(settings.storage_dir)
    db = Database(settings)
    try:
        report = collect_garbage(db, store, min_age_s=3600)
    finally:
        db.dispose()
    assert sorted(report.removed) == sorted(shas) and report.kept_recent == 0
    assert store.blobs() == []


def test_a_blob_held_in_flight_is_spared_until_its_holder_lets_go_or_dies(client, settings) -> None:
    """An upload holds its blob from the commit to its row; gc spares exactly that window,
    and a holder that died holds nothing."""
    run = client.post("/api/runs", json={"name": "r"}).json()["id"]
    sha = _upload(client, run, 1, safetensors_bytes(5))
    client.delete(f"/api/runs/{run}")
    store = BlobStore(settings.storage_dir)
    db = Database(settings)
    try:
        with client.app.state.store.inflight.hold(sha):  # the server's upload, mid-way
            report = collect_garbage(db, store, min_age_s=0)
            assert report.removed == [] and report.kept_recent == 1 and store.exists(sha)
        token = process_token(os.getpid()).rsplit("-", 1)[0] + "-1"  # this pid, another start
        dead = store.inflight.dir / f"hold-{token}-{sha}"  # a holder that was killed
        dead.touch()
        report = collect_garbage(db, store, min_age_s=3600)
    finally:
        db.dispose()
    assert report.removed == [sha] and not dead.exists()


def test_gc_command_reports_what_it_removed(client, settings, monkeypatch) -> None:
    run = client.post("/api/runs", json={"name": "r"}).json()["id"]
    sha = _upload(client, run, 1, safetensors_bytes(7))
    client.delete(f"/api/runs/{run}")
    monkeypatch.setenv("PHASEBOARD_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PHASEBOARD_STORAGE_DIR", str(settings.storage_dir))
    monkeypatch.setenv("PHASEBOARD_HOME", str(settings.home))
    runner = CliRunner()
    result = runner.invoke(cli, ["gc", "--min-age-hours", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove 1 unreferenced blob" in result.output
    assert BlobStore(settings.storage_dir).exists(sha)
    result = runner.invoke(cli, ["gc", "--min-age-hours", "0"])
    assert result.exit_code == 0 and "removed 1 unreferenced blob" in result.output
    assert not BlobStore(settings.storage_dir).exists(sha)


def test_gc_keeps_the_arrays_lens_results_point_to_and_frees_them_with_their_run(
    client, settings
) -> None:
    """learning_order's ``losses_blob`` and essential_dynamics' ``outputs_blob`` are no
    checkpoint's: only the result rows keep them."""
    from phaseboard.server.models import Result

    run = client.post("/api/runs", json={"name": "lens"}).json()["id"]
    store = BlobStore(settings.storage_dir)
    losses, outputs, stray = (store.put_bytes(bytes([i]) * 64) for i in (1, 2, 3))
    for sha in (losses, outputs, stray):
        _age(store, sha, 7200)
    db = Database(settings)
    try:
        with db.session() as s:
            s.add(Result(run_id=run, kind="learning_order", values={"losses_blob": losses}))
            s.add(Result(run_id=run, kind="essential_dynamics", values={"outputs_blob": outputs}))
            s.add(Result(run_id=run, kind="essential_dynamics", values={"outputs_blob": None}))
        report = collect_garbage(db, store, min_age_s=3600)
        assert report.removed == [stray]
        assert store.exists(losses) and store.exists(outputs)
        assert client.delete(f"/api/runs/{run}").status_code == 204
        report = collect_garbage(db, store, min_age_s=3600)
    finally:
        db.dispose()
    assert sorted(report.removed) == sorted([losses, outputs])
