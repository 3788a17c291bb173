"""A real uvicorn server in a subprocess on 127.0.0.1, for streaming and crash tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from phaseboard.server.settings import REPO_ROOT, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    env = {
        "PHASEBOARD_HOME": str(settings.home),
        "PHASEBOARD_DATABASE_URL": settings.database_url,
        "PHASEBOARD_STORAGE_DIR": str(settings.storage_dir),
        "PHASEBOARD_QUEUE": "none",
        "PHASEBOARD_MAX_UPLOAD_MB": str(settings.max_upload_mb),
    }
    if settings.api_token:
        env["PHASEBOARD_API_TOKEN"] = settings.api_token
    return env


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} did not become healthy in {timeout} s")


@contextmanager
def live_server(env: dict[str, str], argv: list[str] | None = None) -> Iterator[LiveServer]:
    """Start ``uvicorn server.app:create_app --factory`` (or ``argv``) and wait for health."""
    port = free_port()
    cmd = argv or [
        sys.executable, "-m", "uvicorn", "phaseboard.server.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning",
    ]  # fmt: skip
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield LiveServer(url, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_big_safetensors(path, megabytes: int) -> int:  # type: ignore[no-untyped-def]
    """Write a ``megabytes`` MB float32 safetensors file in 4 MB chunks; returns its size."""
    import json

    import numpy as np

    n = megabytes * 1024 * 1024 // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    header += " " * (-len(header) % 8)
    chunk = np.random.default_rng(0).normal(size=1 << 20).astype("<f4").tobytes()
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header.encode())
        left = 4 * n
        while left:
            part = chunk[: min(len(chunk), left)]
            fh.write(part)
            left -= len(part)
    return 8 + len(header) + 4 * n
