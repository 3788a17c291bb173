"""Nothing lingers: a trickling upload is cut (408) and leaves no temp file; temp files of
uploads whose process died go at the next start whatever their age; a full disk is a 507 in
the JSON error shape with nothing half-stored, and the server goes on."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from phaseboard.server.app import create_app
from phaseboard.server.migrate import upgrade
from phaseboard.server.settings import Settings
from phaseboard.server.store.inflight import process_token
from tests.server.conftest import safetensors_bytes
from tests.server.live import LiveServer, live_server, settings_env

IDLE_S, MAX_S = 1.0, 4.0


@pytest.fixture(scope="module")
def slow_limits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("slow")
    settings = Settings(home=home, queue="none")
    upgrade(settings)
    env = {
        **settings_env(settings),
        "PHASEBOARD_UPLOAD_IDLE_S": str(IDLE_S),
        "PHASEBOARD_UPLOAD_MAX_S": str(MAX_S),
    }
    with live_server(env) as live:
        live.settings = settings  # type: ignore[attr-defined]
        yield live


def _raw_request(live: LiveServer, head: bytes, body_parts: list[bytes], pause: float) -> bytes:
    """Send ``head``, then each body part ``pause`` seconds apart; the server's answer."""
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=MAX_S + 10) as sock:
        sock.sendall(head)
        for part in body_parts:
            if select.select([sock], [], [], 0)[0]:  # the server answered: stop sending
                break
            try:
                sock.sendall(part)
            except OSError:  # the server already answered and closed
                break
            select.select([sock], [], [], pause)  # wait, waking early for an answer
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and b'"}' in answer:
                break
    return answer


def _upload_head(live: LiveServer, run_id: int, declared: int) -> tuple[bytes, bytes]:
    boundary = "trickle"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="step"\r\n\r\n1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="w.pt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    head = (
        f"POST /api/runs/{run_id}/checkpoints HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(preamble) + declared}\r\n\r\n"
    ).encode()
    return head, preamble


def _temp_files(live: LiveServer) -> list[Path]:
    return list(Path(live.settings.storage_dir, "tmp").glob("upload-*.part"))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_an_upload_that_goes_silent_is_cut_and_leaves_nothing(slow_limits_server) -> None:
    live = slow_limits_server
    run_id = httpx.post(f"{live.url}/api/runs", json={"name": "silent"}).json()["id"]
    head, preamble = _upload_head(live, run_id, 10_000_000)
    started = time.monotonic()
    answer = _raw_request(live, head, [preamble + b"x" * 100_000], pause=IDLE_S + 3)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "request_timeout" and "PHASEBOARD_UPLOAD_IDLE_S" in body["detail"]
    assert elapsed < IDLE_S + 4
    assert _temp_files(live) == []
    assert httpx.get(f"{live.url}/api/runs/{run_id}/checkpoints").json() == []


@pytest.mark.slow
def test_an_upload_that_trickles_is_cut_at_the_overall_limit(slow_limits_server) -> None:
    live = slow_limits_server
    run_id = httpx.post(f"{live.url}/api/runs", json={"name": "trickle"}).json()["id"]
    head, preamble = _upload_head(live, run_id, 10_000_000)
    parts = [head + preamble] + [b"x" * 100] * int(MAX_S / (IDLE_S / 2) + 8)
    started = time.monotonic()
    answer = _raw_request(live, b"", parts, pause=IDLE_S / 2)  # never silent for IDLE_S
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"PHASEBOARD_UPLOAD_MAX_S" in answer
    assert MAX_S - 0.5 < elapsed < MAX_S + 3
    assert _temp_files(live) == []


@pytest.mark.slow
def test_a_json_body_that_goes_silent_is_cut(slow_limits_server) -> None:
    live = slow_limits_server
    head = (
        b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n"
    )
    answer = _raw_request(live, head, [b'{"name": "sl'], pause=IDLE_S + 3)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    names = [r["name"] for r in httpx.get(f"{live.url}/api/runs").json()]
    assert not any(n.startswith("sl") for n in names)


def test_temp_files_of_dead_uploads_go_at_start_whatever_their_age(make_settings) -> None:
    settings = make_settings()
    tmp = Path(settings.storage_dir) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    ours = process_token(os.getpid())
    dead_token = ours.rsplit("-", 1)[0] + "-1"  # this pid with another start time: gone
    dead = tmp / f"upload-{dead_token}-abc.part"
    alive = tmp / f"upload-{ours}-def.part"  # this process: an upload in flight
    legacy = tmp / "upload-xyz.part"  # an older version's name: the age rule
    for path in (dead, alive, legacy):
        path.write_bytes(b"partial")  # all of them seconds old
    create_app(settings)
    assert not dead.exists() and alive.exists() and legacy.exists()
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    create_app(settings)
    assert not legacy.exists() and alive.exists()


def test_gc_frees_a_crashed_uploads_temp_file_at_once(make_settings) -> None:
    from phaseboard.server.blob_gc import collect_garbage
    from phaseboard.server.db import Database
    from phaseboard.server.store.blobs import open_blob_store

    settings = make_settings()
    store = open_blob_store(settings)
    dead = store.tmp_dir / f"upload-{process_token(os.getpid()).rsplit('-', 1)[0]}-1-x.part"
    dead.write_bytes(b"half an upload")
    db = Database(settings)
    try:
        report = collect_garbage(db, store, min_age_s=3600)
    finally:
        db.dispose()
    assert report.temp_files_removed == 1 and not dead.exists()


# --- a full disk -----------------------------------------------------------------------------


def _small_filesystem(path: Path, megabytes: int) -> list[str] | None:
    """Mount a tmpfs of ``megabytes`` at ``path`` when this process may (root), returning the
    command that unmounts it; None otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return None
    mount = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        return None
    return ["umount", str(path)]


@pytest.mark.slow
def test_a_full_disk_is_a_507_in_the_json_shape_and_nothing_half_stored(
    tmp_path: Path,
) -> None:
    """The blob store on a 4 MB filesystem (a tmpfs when we may mount one; else a 4 MB file
    size limit on the server, which the OS reports the same way) and an 8 MB upload."""
    blobs = tmp_path / "blobs"
    unmount = _small_filesystem(blobs, 4)
    settings = Settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage_dir=blobs,
        queue="none",
    )
    upgrade(settings)
    argv = None
    if unmount is None:  # no mount: limit every file the server writes to 4 MB
        argv = ["prlimit", f"--fsize={4 * 1024 * 1024}", sys.executable, "-m", "uvicorn"]
        argv += ["phaseboard.server.app:create_app", "--factory", "--host", "127.0.0.1"]
        argv += ["--port", "{port}", "--log-level", "warning"]
    try:
        with live_server(settings_env(settings), argv) as live, httpx.Client(timeout=60) as http:
            run_id = http.post(f"{live.url}/api/runs", json={"name": "full"}).json()["id"]
            big = os.urandom(8 * 1024 * 1024)
            files = {"file": ("big.safetensors", big, "application/octet-stream")}
            resp = http.post(
                f"{live.url}/api/runs/{run_id}/checkpoints", files=files, data={"step": "1"}
            )
            assert resp.status_code == 507, resp.text
            assert resp.json()["error"] == "insufficient_storage"
            assert "nothing was stored" in resp.json()["detail"]
            assert list((blobs / "tmp").glob("upload-*.part")) == []
            assert http.get(f"{live.url}/api/runs/{run_id}/checkpoints").json() == []
            small = {"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")}
            ok = http.post(
                f"{live.url}/api/runs/{run_id}/checkpoints", files=small, data={"step": "1"}
            )
            assert ok.status_code == 201, ok.text  # the server goes on
    finally:
        if unmount is not None:
            subprocess.run(unmount, check=False)
