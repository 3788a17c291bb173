"""Ingest throughput: ``phaseboard ingest`` from a local Hub cache and from an S3 endpoint,
against a plain file copy of the same bytes measured in the same run.

Writes ``--count`` distinct safetensors checkpoints of ``--mb`` MB each, then times:

- ``copy``: ``shutil.copyfile`` + fsync of every file (the disk's own speed, the baseline);
- ``folder``: ``ingest_directory`` of the local folder into a real server (uvicorn on
  127.0.0.1, SQLite, local blob directory): what every import costs on top of a copy;
- ``hub cache``: ``ingest_hub`` of the same files laid out as one Hub branch each in a
  ``huggingface_hub`` cache, offline (``HF_HUB_OFFLINE=1``: nothing is fetched);
- ``s3 source``: ``ingest_directory`` of ``s3://bucket/prefix`` on moto's S3 server on
  loopback (fsspec through obstore), the server's blobs local;
- ``s3 blobs``: the local folder into a server whose blob store is that S3 endpoint;
- ``s3 get``: boto3 downloading the same objects from moto (what the endpoint itself serves:
  moto is pure Python and shares this process, so the S3 rows are bounded by it).

Every ingest row gets a fresh server, so none finds the bytes already stored. Each prints
MB/s and its ratio to the copy. Loopback only; bounded by --mb x --count.

    .venv/bin/python bench/ingest_throughput.py --mb 32 --count 4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = Path(tempfile.mkdtemp(prefix="pb-ingest-bench-"))
# The Hub library reads these when first imported: set them before anything imports it.
os.environ["HF_HOME"] = str(WORK / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
       "AWS_REGION": "us-east-1"}  # fmt: skip
os.environ.update(AWS)


def write_checkpoints(folder: Path, mb: int, count: int) -> list[Path]:
    """``count`` safetensors files of ``mb`` MB of distinct random float32 each."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        n = mb * 1024 * 1024 // 4
        w = torch.from_numpy(np.random.default_rng(i).standard_normal(n, dtype=np.float32))
        path = folder / f"step_{(i + 1) * 1000}.safetensors"
        save_file({"w": w}, str(path))
        paths.append(path)
    return paths


def hub_cache(files: list[Path], repo: str) -> None:
    """The files as one ``step<N>`` branch each, laid out as huggingface_hub caches them."""
    repo_dir = WORK / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    for path in files:
        step = path.stem.split("_")[1]
        commit = hashlib.sha1(f"{repo}@{step}".encode()).hexdigest()
        blob = repo_dir / "blobs" / hashlib.sha1(path.name.encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        snap = repo_dir / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / f"step{step}").write_text(commit)


@contextmanager
def server(name: str, **settings: object) -> Iterator[str]:
    """A migrated server on a free loopback port, in a thread."""
    import uvicorn

    from phaseboard.server.app import create_app
    from phaseboard.server.migrate import upgrade
    from phaseboard.server.settings import Settings

    home = WORK / f"server-{name}"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    values = {"home": home, "queue": "none", "port": port, "max_upload_mb": 100_000, **settings}
    s = Settings(**values)  # type: ignore[arg-type]
    upgrade(s)
    srv = uvicorn.Server(uvicorn.Config(create_app(s), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def timed(label: str, total: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    rate = total / dt / 1e6
    print(f"  {label:<12} {dt:7.2f} s  {rate:8.1f} MB/s", flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=32, help="MB per checkpoint")
    ap.add_argument("--count", type=int, default=4, help="checkpoints")
    args = ap.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer
    from rich.console import Console

    from phaseboard import Phaseboard
    from phaseboard.server.commands.ingest_dir import ingest_directory
    from phaseboard.server.commands.ingest_hub import ingest_hub

    files = write_checkpoints(WORK / "run", args.mb, args.count)
    total = sum(p.stat().st_size for p in files)
    hub_cache(files, "bench/series")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    for bucket in ("source", "blobs"):
        s3.create_bucket(Bucket=bucket)
    for path in files:
        s3.upload_file(str(path), "source", f"runs/a/{path.name}")
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run

    def copy() -> None:
        out = WORK / "copy"
        out.mkdir()
        for path in files:
            shutil.copyfile(path, out / path.name)
            with open(out / path.name, "rb+") as fh:
                os.fsync(fh.fileno())

    print(f"{args.count} checkpoints x {args.mb} MB = {total / 1e6:.0f} MB", flush=True)
    rates = {"copy": timed("copy", total, copy)}

    def s3_get() -> None:
        for path in files:
            s3.download_file("source", f"runs/a/{path.name}", str(WORK / "got"))

    rates["s3 get"] = timed("s3 get", total, s3_get)
    rows: dict[str, Callable[[Phaseboard], object]] = {
        "folder": lambda pb: ingest_directory(WORK / "run", "run", pb, console=quiet),
        "hub cache": lambda pb: ingest_hub("hf://bench/series", "run", pb, console=quiet),
        "s3 source": lambda pb: ingest_directory("s3://source/runs/a", "run", pb, console=quiet),
    }
    for label, ingest in rows.items():  # a fresh server each: no row finds the bytes stored
        with server(label.replace(" ", "-")) as url, Phaseboard(url) as pb:
            rates[label] = timed(label, total, lambda pb=pb, ingest=ingest: ingest(pb))
    with server("s3", blob_url="s3://blobs/pb") as url, Phaseboard(url) as pb:
        rates["s3 blobs"] = timed(
            "s3 blobs", total, lambda: ingest_directory(WORK / "run", "run", pb, console=quiet)
        )
    moto.stop()
    print("\nratio to a plain file copy of the same bytes (higher is faster):")
    for label, rate in rates.items():
        print(f"  {label:<12} {rate / rates['copy']:6.3f}x")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
