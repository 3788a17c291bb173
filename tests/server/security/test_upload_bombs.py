"""Nothing small grows large: every upload bomb is a 422 with the store unchanged, and on a
real server its cost is bounded (resident memory of the server process, wall time).

The bounds below are what ``docs/limits-and-security.md`` states: peak RSS growth of the
server process during one refused upload under ``RSS_BOUND_MB``, answered within
``TIME_BOUND_S``. Before these checks the same files cost +749 MB (list(range)), +331 MB and
12 s (deflated dicts), +1.43 GB (an expanded view) and +1.5 GB with 52 s (a 76 MB header).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import safetensors_bytes
from tests.server.live import live_server, settings_env
from tests.server.security import attacks

RSS_BOUND_MB = 64
TIME_BOUND_S = 5.0


def _upload(client: Any, url: str, data: bytes, step: int) -> Any:
    files = {"file": ("evil.pt", data, "application/octet-stream")}
    return client.post(url, files=files, data={"step": str(step), "name": f"d{step}"})


@pytest.mark.parametrize("name", list(attacks.ALL))
def test_each_bomb_is_a_422_and_stores_nothing(client: TestClient, snapshot, name: str) -> None:
    run_id = client.post("/api/runs", json={"name": "target"}).json()["id"]
    before = snapshot()
    data = attacks.ALL[name]()
    resp = _upload(client, f"/api/runs/{run_id}/checkpoints", data, 1)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "bad_checkpoint"
    assert "nothing was stored" in resp.json()["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    "build",
    [
        attacks.tokens_inflating,
        attacks.expanded,
        lambda: attacks.in_archive(attacks.bytearray_of()),
    ],
    ids=["deflated 64 MB of tokens", "expanded view", "bytearray(1e9)"],
)
def test_datasets_get_every_check_checkpoints_get(
    client: TestClient, snapshot, build: Callable[[], bytes]
) -> None:
    run_id = client.post("/api/runs", json={"name": "target"}).json()["id"]
    before = snapshot()
    resp = _upload(client, f"/api/runs/{run_id}/datasets", build(), 1)
    assert resp.status_code == 422, resp.text
    assert "refused" in resp.json()["detail"] and "nothing was stored" in resp.json()["detail"]
    assert snapshot() == before


def test_a_header_with_more_entries_than_allowed_is_refused_before_parsing(make_settings) -> None:
    from phaseboard.server.app import create_app

    with TestClient(create_app(make_settings(checkpoint_max_tensors=1000))) as client:
        run_id = client.post("/api/runs", json={"name": "r"}).json()["id"]
        ok = _upload(client, f"/api/runs/{run_id}/checkpoints", safetensors_bytes(), 1)
        assert ok.status_code == 201, ok.text
        resp = _upload(
            client, f"/api/runs/{run_id}/checkpoints", attacks.safetensors_many_entries(1001), 2
        )
        assert resp.status_code == 422, resp.text
        assert "more than the limit of 1000" in resp.json()["detail"]


class _PeakRSS:
    """Samples a process's resident memory every few milliseconds while in use."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRSS:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.003)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real uvicorn server (SQLite), warmed up by one good upload (torch imported)."""
    from phaseboard.server.migrate import upgrade
    from phaseboard.server.settings import Settings

    home = tmp_path_factory.mktemp("bombs")
    settings = Settings(home=home, queue="none")
    upgrade(settings)
    with live_server(settings_env(settings)) as live, httpx.Client(timeout=60) as http:
        run_id = http.post(f"{live.url}/api/runs", json={"name": "warm"}).json()["id"]
        ok = _upload(http, f"{live.url}/api/runs/{run_id}/checkpoints", safetensors_bytes(), 0)
        assert ok.status_code == 201, ok.text
        ok = _upload(
            http, f"{live.url}/api/runs/{run_id}/checkpoints", attacks.torch_bytes({"w": 1}), 1
        )  # a torch file through the unpickler once (an int is not a tensor: 422)
        assert ok.status_code == 422, ok.text
        yield live.url, live.proc.pid


@pytest.mark.slow
@pytest.mark.parametrize("name", list(attacks.ALL))
def test_a_bomb_costs_the_server_little_memory_and_time(server: tuple[str, int], name: str) -> None:
    url, pid = server
    data = attacks.ALL[name]()
    with httpx.Client(timeout=60) as http:
        run_id = http.post(f"{url}/api/runs", json={"name": f"bomb {name}"}).json()["id"]
        with _PeakRSS(pid) as rss:
            started = time.monotonic()
            resp = _upload(http, f"{url}/api/runs/{run_id}/checkpoints", data, 1)
            elapsed = time.monotonic() - started
    print(f"\n{name}: {len(data)} bytes, +{rss.growth_mb:.1f} MB peak RSS, {elapsed:.3f} s")
    assert resp.status_code == 422, resp.text
    assert rss.growth_mb < RSS_BOUND_MB, f"{name}: +{rss.growth_mb:.0f} MB"
    assert elapsed < TIME_BOUND_S, f"{name}: {elapsed:.1f} s"


@pytest.mark.slow
def test_a_deflated_dataset_costs_the_server_little(server: tuple[str, int]) -> None:
    url, pid = server
    data = attacks.tokens_inflating()  # 64 KB that inflate to 64 MB
    with httpx.Client(timeout=60) as http:
        run_id = http.post(f"{url}/api/runs", json={"name": "tokens bomb"}).json()["id"]
        with _PeakRSS(pid) as rss:
            started = time.monotonic()
            resp = _upload(http, f"{url}/api/runs/{run_id}/datasets", data, 1)
            elapsed = time.monotonic() - started
    print(f"\ndeflated tokens: {len(data)} bytes, +{rss.growth_mb:.1f} MB, {elapsed:.3f} s")
    assert resp.status_code == 422, resp.text
    assert rss.growth_mb < RSS_BOUND_MB, f"+{rss.growth_mb:.0f} MB"
