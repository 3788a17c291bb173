"""``phaseboard up`` on a fresh PHASEBOARD_HOME migrates and serves /api/health and /docs."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.server.live import live_server


@pytest.mark.slow
def test_phaseboard_up_on_a_fresh_home_serves_health_and_docs(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    exe = Path(sys.executable).parent / "phaseboard"
    argv = [str(exe), "up", "--port", "{port}"]
    env = {
        "PHASEBOARD_HOME": str(home),
        "PHASEBOARD_DATABASE_URL": "",
        "PHASEBOARD_STORAGE_DIR": "",
    }
    with live_server(env, argv=argv) as server:
        health = httpx.get(f"{server.url}/api/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        docs = httpx.get(f"{server.url}/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "/api/runs/{run_id}/checkpoints" in httpx.get(f"{server.url}/openapi.json").text
    assert (home / "phaseboard.db").is_file() and (home / "blobs").is_dir()
