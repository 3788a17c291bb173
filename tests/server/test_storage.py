"""Blob store: content addressing, atomic commit, dedupe, and no path outside STORAGE_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from phaseboard.server.errors import BadInput
from phaseboard.server.storage import BlobStore
from tests.server.conftest import safetensors_bytes


def test_same_bytes_are_stored_once_and_temp_files_do_not_linger(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    a = store.put_bytes(b"hello" * 1000)
    b = store.put_bytes(b"hello" * 1000)
    assert a == b and store.blobs() == [a]
    assert store.open_path(a).read_bytes() == b"hello" * 1000
    assert list(store.tmp_dir.iterdir()) == []


def test_stage_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    from phaseboard.server.errors import PayloadTooLarge

    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(PayloadTooLarge):
        store.stage([b"x" * 600_000, b"x" * 600_000], max_bytes=1_000_000)
    assert list(store.tmp_dir.iterdir()) == [] and store.blobs() == []


def test_clean_tmp_removes_only_old_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    stale = store.tmp_dir / "upload-old.part"
    stale.write_bytes(b"partial")
    assert store.clean_tmp(max_age_s=3600) == 0 and stale.exists()  # may be in flight
    assert store.clean_tmp(max_age_s=0) == 1 and not stale.exists()


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "/etc/passwd", "a" * 63, "A" * 64, "../" + "a" * 61, ""]
)
def test_only_sha256_digests_map_to_paths(tmp_path: Path, bad: str) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BadInput):
        store.path_for(bad)


@pytest.mark.parametrize("filename", ["../../escape.bin", "/tmp/abs.bin", "..\\..\\win.bin"])
def test_upload_filenames_never_reach_the_filesystem(client, run_id, settings, filename) -> None:
    outside = settings.storage_dir.parent  # type: ignore[union-attr]
    before = {p for p in outside.rglob("*") if "blobs" not in p.parts}
    resp = client.post(
        f"/api/runs/{run_id}/checkpoints",
        files={"file": (filename, safetensors_bytes())},
        data={"step": "1"},
    )
    assert resp.status_code == 201, resp.text
    sha = resp.json()["sha256"]
    blob = settings.storage_dir / sha[:2] / sha[2:4] / sha  # type: ignore[operator]
    assert blob.is_file()
    after = {p for p in outside.rglob("*") if "blobs" not in p.parts}
    new = {p for p in after - before if p.suffix not in (".db", ".db-wal", ".db-shm")}
    assert not new, new
    assert not Path("/tmp/abs.bin").exists()


@pytest.mark.parametrize(
    "url",
    [
        "/api/checkpoints/..%2F..%2Fetc%2Fpasswd/download",
        "/api/checkpoints/../../etc/passwd/download",
        "/api/checkpoints/%2e%2e/download",
        "/api/checkpoints/1e3/download",
    ],
)
def test_download_ids_are_integers_not_paths(client, url) -> None:
    resp = client.get(url)
    assert resp.status_code in (404, 422)
    assert b"root:" not in resp.content
