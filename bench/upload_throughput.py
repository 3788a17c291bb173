"""Checkpoint upload throughput and server memory, against baselines from the same run.

Starts a real ``uvicorn`` server (embedded SQLite, local blob dir) on 127.0.0.1, uploads
``--count`` generated safetensors checkpoints of ``--mb`` MB each through streamed httpx
multipart, and prints MB/s and the server's peak RSS growth (psutil, sampled every 20 ms).
Baselines, measured in the same run on the same file: a disk copy (``shutil.copyfile`` +
fsync) and raw loopback HTTP throughput into a trivial ASGI app that only drains the body.

    .venv/bin/python bench/upload_throughput.py --mb 200 --count 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def sink_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Baseline ASGI app: reads the whole body, answers its length."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    n, more = 0, True
    while more:
        msg = await receive()
        n += len(msg.get("body", b""))
        more = msg.get("more_body", False)
    body = json.dumps({"bytes": n, "status": "ok"}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_checkpoint(path: Path, megabytes: int, seed: int) -> int:
    n = megabytes * 1024 * 1024 // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    header += " " * (-len(header) % 8)
    chunk = np.random.default_rng(seed).normal(size=1 << 20).astype("<f4").tobytes()
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header.encode())
        left = 4 * n
        while left:
            fh.write(chunk[: min(len(chunk), left)])
            left -= min(len(chunk), left)
    return path.stat().st_size


class Server:
    def __init__(self, app: str, env: dict[str, str], factory: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        if factory:
            cmd.append("--factory")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/api/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.ps = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def timed_uploads(server: Server, url_for, files: list[Path]) -> tuple[float, float, list]:  # type: ignore[no-untyped-def]
    """Upload each file; returns (seconds, peak RSS growth in MB, responses)."""
    base = server.ps.memory_info().rss
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.ps.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = []
    t0 = time.perf_counter()
    with httpx.Client(timeout=600) as http:
        for i, path in enumerate(files):
            with open(path, "rb") as fh:
                resp = http.post(url_for(i), files={"file": (path.name, fh)}, data={"step": str(i)})
            resp.raise_for_status()
            out.append(resp.json())
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    return elapsed, (peak[0] - base) / 2**20, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="size of each checkpoint (MB)")
    ap.add_argument("--count", type=int, default=5, help="number of checkpoints")
    args = ap.parse_args()

    from phaseboard.server.migrate import upgrade
    from phaseboard.server.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="pb-bench-"))
    try:
        files = [work / f"ckpt{i}.safetensors" for i in range(args.count)]
        sizes = [write_checkpoint(p, args.mb, seed=i) for i, p in enumerate(files)]
        total_mb = sum(sizes) / 2**20

        t0 = time.perf_counter()  # baseline 1: disk copy + fsync of the same files
        for p in files:
            dst = work / "copy.bin"
            shutil.copyfile(p, dst)
            with open(dst, "rb+") as fh:
                os.fsync(fh.fileno())
            dst.unlink()
        copy_rate = total_mb / (time.perf_counter() - t0)

        sink = Server("bench.upload_throughput:sink_app", {}, factory=False)  # baseline 2
        try:
            s, sink_rss, _ = timed_uploads(sink, lambda i: sink.url + "/sink", files)
            sink_rate = total_mb / s
        finally:
            sink.stop()

        settings = Settings(home=work / "home", database_url=f"sqlite:///{work / 'pb.db'}",
                            storage_dir=work / "blobs", queue="none")  # fmt: skip
        upgrade(settings)
        env = {"PHASEBOARD_HOME": str(settings.home),
               "PHASEBOARD_DATABASE_URL": settings.database_url,
               "PHASEBOARD_STORAGE_DIR": str(settings.storage_dir), "PHASEBOARD_QUEUE": "none",
               "PHASEBOARD_MAX_UPLOAD_MB": str(args.mb + 16)}  # fmt: skip
        pb = Server("phaseboard.server.app:create_app", env, factory=True)
        try:
            rid = httpx.post(pb.url + "/api/runs", json={"name": "bench"}).json()["id"]
            base = f"{pb.url}/api/runs/{rid}/checkpoints"
            s, pb_rss, out = timed_uploads(pb, lambda i: base, files)
            pb_rate = total_mb / s
        finally:
            pb.stop()
        assert all(o["status"] == "ok" for o in out)

        print(f"files: {args.count} x {args.mb} MB safetensors ({total_mb:.0f} MB total)")
        print(f"baseline disk copy+fsync        : {copy_rate:8.1f} MB/s")
        drain = f"{sink_rate:8.1f} MB/s  RSS growth {sink_rss:6.1f} MB"
        print(f"baseline loopback HTTP (drain)  : {drain}")
        print("phaseboard upload (stream, hash, fsync, validate, commit, row)")
        print(f"                                : {pb_rate:8.1f} MB/s  RSS growth {pb_rss:6.1f} MB")
        print(f"ratio upload / loopback drain   : {pb_rate / sink_rate:8.2f}")
        print(f"ratio upload / disk copy        : {pb_rate / copy_rate:8.2f}")
        print(f"peak RSS growth / file size     : {pb_rss / args.mb:8.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
