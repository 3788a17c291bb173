"""The restricted LLCs of a run, timed on another version of Phaseboard (a subprocess helper).

``bench/trajectory.py --baseline-ref REF`` unpacks the source tree of commit REF (by
default one that ran restricted LLCs as one job per checkpoint) and runs this script with
that tree first on ``sys.path``: it starts that version's ``phaseboard up`` with its own
defaults, uploads the checkpoints saved by the caller through that version's client, queues
``llc_restricted`` and prints one JSON line: the seconds from queueing to every job done.

It uses only the client API both versions share (``Phaseboard.run``, ``log_checkpoint``,
``analyze``, ``jobs``), so the code under test is entirely that version's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


def start(tree: Path, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """That tree's ``phaseboard up`` on a free port, with its default settings."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The CLI moved from server.cli to server.commands.cli. Chosen by the files that tree
    # has: an import attempt could reach this checkout's modules through the editable
    # install's finder, which serves submodules the older tree lacks.
    module = "server.commands.cli" if (tree / "server/commands/cli.py").is_file() else "server.cli"
    cli = f"from {module} import app; app()"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PHASEBOARD_")},
        "PHASEBOARD_HOME": str(home),
        "PYTHONPATH": str(tree),
    }
    cmd = [sys.executable, "-c", cli, "up", "--host", "127.0.0.1", "--port", str(port)]
    with (home / "server.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", type=Path, required=True, help="that version's source tree")
    ap.add_argument("--home", type=Path, required=True, help="its PHASEBOARD_HOME (empty)")
    ap.add_argument("--checkpoints", type=Path, required=True, help="torch.save'd [(step, sd)]")
    ap.add_argument("--task-config", required=True, help="JSON")
    ap.add_argument("--llc", required=True, help="JSON: the LLC settings of the run")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    # That version's client: its tree is first on sys.path, and this checkout installs no
    # top-level ``server`` (``import phaseboard`` here would be this checkout's client).
    from server.client import Phaseboard

    args.home.mkdir(parents=True, exist_ok=True)
    proc, url = start(args.tree, args.home)
    try:
        pb = Phaseboard(url)
        deadline = time.monotonic() + 90
        while not pb.ping(timeout_s=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"that version's server did not start; see {args.home}")
            time.sleep(0.3)
        run = pb.run(
            "per-job",
            task="modular_addition",
            task_config=json.loads(args.task_config),
            analysis_config={"llc": json.loads(args.llc), "analyses": []},
        )
        for step, sd in torch.load(args.checkpoints):
            run.log_checkpoint(step, sd)
        run.flush()
        t0 = time.perf_counter()
        run.analyze(lenses=["llc_restricted"])
        while time.perf_counter() - t0 < args.timeout:
            time.sleep(0.5)
            jobs = [j for j in run.jobs()["jobs"] if j["kind"] == "llc_restricted"]
            failed = [j for j in jobs if j["state"] == "failed"]
            if failed:
                raise SystemExit(f"job failed: {(failed[0]['error'] or '')[:500]}")
            if jobs and all(j["state"] in ("done", "cancelled") for j in jobs):
                print(json.dumps({"seconds": time.perf_counter() - t0, "jobs": len(jobs)}))
                return
        raise SystemExit(f"not done within {args.timeout:.0f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
