"""Checkpoint ingest: streaming upload, validation before commit, nothing lost on bad input."""

from __future__ import annotations

import io
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from phaseboard.analysis.checkpoints import save_safetensors_bytes
from phaseboard.analysis.tasks import get_task
from phaseboard.server.app import create_app
from phaseboard.server.storage import BlobStore
from tests.server.conftest import safetensors_bytes, store_state, tiny_state_dict
from tests.server.live import live_server, settings_env


def upload(client, run_id: int, data: bytes, step: int | str | None = 1, name="c.safetensors"):  # type: ignore[no-untyped-def]
    form = {} if step is None else {"step": str(step)}
    return client.post(f"/api/runs/{run_id}/checkpoints", files={"file": (name, data)}, data=form)


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_upload_safetensors_lists_and_downloads(client, run_id, snapshot) -> None:
    data = safetensors_bytes()
    resp = upload(client, run_id, data, step=100)
    assert resp.status_code == 201, resp.text
    ck = resp.json()
    assert (ck["step"], ck["format"], ck["status"], ck["error"]) == (100, "safetensors", "ok", None)
    assert (ck["n_tensors"], ck["n_params"], ck["size"]) == (2, 16, len(data))
    listed = client.get(f"/api/runs/{run_id}/checkpoints").json()
    assert [c["id"] for c in listed] == [ck["id"]]
    got = client.get(ck["download_url"])
    assert got.status_code == 200 and got.content == data
    assert client.get(f"/api/checkpoints/{ck['id']}").json()["sha256"] == ck["sha256"]
    assert client.get(f"/api/runs/{run_id}").json()["checkpoint_count"] == 1
    assert snapshot().blobs and not [f for f in snapshot().files if f.startswith("tmp/u")]


def test_upload_torch_state_dict_with_wrapper(client, run_id) -> None:
    data = torch_bytes({"model": tiny_state_dict(), "step": 7, "optimizer": {"lr": [0.1]}})
    resp = upload(client, run_id, data, step=7, name="ckpt.pt")
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "torch" and resp.json()["n_tensors"] == 2


def test_same_bytes_twice_are_stored_once(client, run_id, snapshot) -> None:
    data = safetensors_bytes()
    a, b = upload(client, run_id, data, step=1), upload(client, run_id, data, step=2)
    assert a.status_code == b.status_code == 201
    assert a.json()["sha256"] == b.json()["sha256"]
    assert len(snapshot().blobs) == 1 and snapshot().rows["checkpoints"] == 2


def test_duplicate_step_is_rejected_and_store_unchanged(client, run_id, snapshot) -> None:
    assert upload(client, run_id, safetensors_bytes(0), step=5).status_code == 201
    before = snapshot()
    resp = upload(client, run_id, safetensors_bytes(1), step=5)  # different bytes, same step
    assert resp.status_code == 409
    assert "step 5" in resp.json()["detail"]
    assert snapshot() == before


def test_unknown_run_is_404_and_store_unchanged(client, snapshot) -> None:
    before = snapshot()
    resp = upload(client, 4242, safetensors_bytes())
    assert resp.status_code == 404 and "run 4242" in resp.json()["detail"]
    assert snapshot() == before


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused_and_nothing_runs(client, run_id, snapshot, tmp_path):
    marker = tmp_path / "pwned"
    before = snapshot()
    resp = upload(
        client, run_id, torch_bytes({"w": torch.ones(2), "x": _Evil(marker)}), name="a.pt"
    )
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "refused" in detail and "system" in detail and "nothing was stored" in detail
    assert not marker.exists()
    assert snapshot() == before


def _bad_files() -> dict[str, tuple[bytes, str]]:
    st = safetensors_bytes()
    pt = torch_bytes(tiny_state_dict())
    return {
        "truncated_safetensors": (st[: len(st) - 10], "truncated"),
        "truncated_torch": (pt[: len(pt) // 2], "corrupt torch checkpoint"),
        "garbage": (b"this is not a checkpoint at all" * 10, "not a checkpoint"),
        "single_tensor": (torch_bytes(torch.ones(3)), "single tensor"),
        "non_tensor_values": (torch_bytes({"a": 1, "b": "two"}), "not tensors"),
        "empty_safetensors": (
            save_safetensors_bytes({}) if False else b"\x02\0\0\0\0\0\0\0{}",
            "no tensors",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_files()))
def test_bad_checkpoint_is_422_naming_the_problem_and_store_unchanged(
    client, run_id, snapshot, case
) -> None:
    data, needle = _bad_files()[case]
    before = snapshot()
    resp = upload(client, run_id, data)
    assert resp.status_code == 422, resp.text
    assert needle in resp.json()["detail"]
    assert snapshot() == before


def test_nan_weights_are_stored_but_flagged(client, run_id) -> None:
    sd = tiny_state_dict()
    sd["fc.bias"][1] = float("nan")
    sd["fc.weight"][0, 0] = float("inf")
    resp = upload(client, run_id, save_safetensors_bytes(sd))
    assert resp.status_code == 201
    ck = resp.json()
    assert ck["status"] == "flagged"
    assert "fc.bias" in ck["error"] and "fc.weight" in ck["error"] and "NaN" in ck["error"]


@pytest.mark.parametrize(
    "step, needle",
    [(None, "'step'"), ("abc", "not an integer"), ("-3", ">= 0"), ("", "'step'")],
)
def test_missing_or_bad_step_is_422(client, run_id, snapshot, step, needle) -> None:
    before = snapshot()
    resp = upload(client, run_id, safetensors_bytes(), step=step)
    assert resp.status_code == 422 and needle in resp.json()["detail"]
    assert snapshot() == before


def test_step_may_come_as_query_parameter(client, run_id) -> None:
    resp = client.post(
        f"/api/runs/{run_id}/checkpoints?step=9", files={"file": ("c", safetensors_bytes())}
    )
    assert resp.status_code == 201 and resp.json()["step"] == 9


def test_missing_file_part_is_422(client, run_id, snapshot) -> None:
    before = snapshot()
    resp = client.post(f"/api/runs/{run_id}/checkpoints", files={"other": ("x", b"123")},
                       data={"step": "1"})  # fmt: skip
    assert resp.status_code == 422 and "'file'" in resp.json()["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    "headers, body, status, needle",
    [
        ({"content-type": "application/json"}, b'{"step": 1}', 415, "multipart/form-data"),
        ({"content-type": "application/octet-stream"}, b"abc", 415, "multipart/form-data"),
        ({"content-type": "multipart/form-data"}, b"abc", 422, "boundary"),
        (
            {"content-type": "multipart/form-data; boundary=XX"},
            b"--XX\r\ngarbage",
            422,
            "multipart",
        ),
    ],
)
def test_wrong_content_is_rejected(client, run_id, snapshot, headers, body, status, needle):
    before = snapshot()
    resp = client.post(f"/api/runs/{run_id}/checkpoints", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["detail"]
    assert snapshot() == before


def test_oversize_upload_is_413_and_store_unchanged(make_settings) -> None:
    settings = make_settings(max_upload_mb=1)
    with TestClient(create_app(settings)) as client:
        rid = client.post("/api/runs", json={"name": "big"}).json()["id"]
        before = store_state(settings)
        big = save_safetensors_bytes({"w": torch.zeros(300_000)})  # 1.2 MB
        resp = upload(client, rid, big)  # Content-Length is known: refused before reading
        assert resp.status_code == 413 and "1 MB" in resp.json()["detail"]

        def chunks():  # no Content-Length: refused while streaming
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        resp = client.post(
            f"/api/runs/{rid}/checkpoints?step=1",
            content=iter([body, *chunks(), b"\r\n--B--\r\n"]),
            headers={"content-type": "multipart/form-data; boundary=B"},
        )
        assert resp.status_code == 413 and "exceeds the limit" in resp.json()["detail"]
        assert store_state(settings) == before


class _FakeQueue:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []

    def checkpoints_added(self, run_id: int, checkpoint_ids: list[int]) -> list[int]:
        self.calls.append((run_id, checkpoint_ids))
        return [11, 12]


def test_upload_plans_analyses_only_for_runs_with_a_task(client) -> None:
    queue = _FakeQueue()
    client.app.state.queue = queue
    plain = client.post("/api/runs", json={"name": "plain"}).json()["id"]
    tasked = client.post("/api/runs", json={"name": "t", "task": "dln"}).json()["id"]
    assert upload(client, plain, safetensors_bytes()).json()["job_ids"] == []
    dln = get_task("dln", {}).build_model().state_dict()
    resp = upload(client, tasked, save_safetensors_bytes(dln))
    assert resp.json()["job_ids"] == [11, 12]
    assert queue.calls == [(tasked, [resp.json()["id"]])]
    client.app.state.queue = None


@pytest.mark.parametrize("where", ["blob_commit", "row_insert"])
def test_failure_mid_store_leaves_no_row_and_no_partial_blob(settings, monkeypatch, where) -> None:
    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"injected failure at {where}")

    if where == "blob_commit":
        monkeypatch.setattr(BlobStore, "commit", boom)
    else:
        from sqlalchemy.orm import Session

        monkeypatch.setattr(Session, "refresh", boom)  # after the INSERT, before COMMIT
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        rid = client.post("/api/runs", json={"name": "r"}).json()["id"]
        before = store_state(settings)
        resp = upload(client, rid, safetensors_bytes())
        assert resp.status_code == 500
        assert store_state(settings) == before  # no row, no blob, no temp file


def _partial_upload(url: str, run_id: int, total: int, sent: int) -> socket.socket:
    """Send headers and ``sent`` of ``total`` file bytes, then stall (a client mid-upload)."""
    host, port = url.removeprefix("http://").split(":")
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    tail = b"\r\n--B--\r\n"
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"POST /api/runs/{run_id}/checkpoints?step=1 HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary=B\r\n"
        f"Content-Length: {len(head) + total + len(tail)}\r\n\r\n".encode()
        + head
        + b"\0" * sent
    )
    return sock


def test_server_killed_mid_upload_leaves_no_row_and_no_blob(settings) -> None:
    with live_server(settings_env(settings)) as server:
        import httpx

        rid = httpx.post(f"{server.url}/api/runs", json={"name": "k"}).json()["id"]
        before = store_state(settings)
        sock = _partial_upload(server.url, rid, total=8 << 20, sent=4 << 20)
        tmp = Path(settings.storage_dir) / "tmp"  # type: ignore[arg-type]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            p.stat().st_size > 0 for p in tmp.glob("upload-*.part")
        ):
            time.sleep(0.05)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        sock.close()
    after = store_state(settings)
    assert after.rows == before.rows and after.blobs == before.blobs
    leftovers = [f for f in after.files if f.startswith("tmp/upload-")]
    assert leftovers, "the crash should have left a temp file to clean"
    assert BlobStore(settings.storage_dir).clean_tmp(max_age_s=0) == len(leftovers)
    assert store_state(settings) == before


@pytest.mark.slow
def test_200mb_upload_streams_with_flat_server_memory(tmp_path) -> None:
    """A real server on loopback; its RSS must not grow with the file (far below 200 MB)."""
    import threading

    import httpx
    import psutil

    from phaseboard.server.migrate import upgrade
    from phaseboard.server.settings import Settings
    from tests.server.live import write_big_safetensors

    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'pb.db'}",
                        storage_dir=tmp_path / "blobs", queue="none")  # fmt: skip
    upgrade(settings)
    path = tmp_path / "big.safetensors"
    size = write_big_safetensors(path, 200)
    with live_server(settings_env(settings)) as server, httpx.Client(timeout=300) as http:
        rid = http.post(f"{server.url}/api/runs", json={"name": "big"}).json()["id"]
        url = f"{server.url}/api/runs/{rid}/checkpoints"
        warm = http.post(url, files={"file": ("w", safetensors_bytes())}, data={"step": "0"})
        assert warm.status_code == 201
        proc = psutil.Process(server.proc.pid)
        base, peak, done = proc.memory_info().rss, [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            resp = http.post(url, files={"file": ("big.safetensors", fh)}, data={"step": "1"})
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
        assert resp.status_code == 201, resp.text
        assert resp.json()["size"] == size and resp.json()["status"] == "ok"
        growth_mb = (peak[0] - base) / 2**20
        rate = size / 2**20 / elapsed
        print(f"200 MB upload: {rate:.0f} MB/s, server RSS growth {growth_mb:.1f} MB")
        assert growth_mb < 60, f"server RSS grew by {growth_mb:.0f} MB for a 200 MB upload"
