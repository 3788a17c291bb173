"""A whole `phaseboard demo` trajectory: how long its analyses take after training.

Trains the demo's modular-addition run once (the same config and checkpoint schedule as
`phaseboard demo`), then, against real `phaseboard up` servers (subprocesses, SQLite, local
worker pool), measures:

A. the full demo analyses (metrics, LLC, restricted LLC for every group, phases) on every
   checkpoint with the default settings: time to all done, time to the first LLC batch, and
   how long after it the first automatic phase boundaries appear;
B. the restricted LLCs alone on ``--baseline-checkpoints`` checkpoints (default: all of the
   demo's), three times in this run:
   with the defaults (batched across checkpoints, one worker thread per core, 1 torch thread
   each), batched with a worker process per core instead (``local_pool = "processes"``),
   and as before batching ("per-job": ``llc_batch_checkpoints=1``, one worker thread,
   torch's default intra-op threads, no fast lane). Prints the per-job / batched ratio.
   With ``--baseline-ref REF`` (default: e0b6e1b, a commit that ran restricted LLCs
   as one job per checkpoint) also the per-job path of that version, its own
   `phaseboard up` with its own defaults (``bench/per_job_at_ref.py``), on the same
   checkpoints and settings in the same run: the same estimates run as per-checkpoint jobs,
   a fixed reference that later speed-ups of single jobs do not move.

Targets: A under 5 minutes on the 2-core CPU machine, B's ratio at least 5, the
first boundaries within a minute of the first LLC batch.

    .venv/bin/python bench/trajectory.py                       # the demo: 32 checkpoints
    .venv/bin/python bench/trajectory.py --quick               # `demo --quick` config
    .venv/bin/python bench/trajectory.py --device cuda --checkpoints 100   # GPU figure
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from phaseboard import Phaseboard  # noqa: E402
from phaseboard.server.commands.demo import (  # noqa: E402
    FULL_CONFIG,
    FULL_LLC,
    QUICK_CONFIG,
    QUICK_LLC,
    _get_task,
    _json_config,
    checkpoint_schedule,
    start_server,
)
from phaseboard.server.settings import Settings  # noqa: E402

DEMO_KINDS = ["metrics", "llc", "llc_restricted"]
PER_JOB_ENV = {  # the path before batching: what `phaseboard up` did by default
    "PHASEBOARD_LLC_BATCH_CHECKPOINTS": "1",
    "PHASEBOARD_LOCAL_WORKERS": "1",
    "PHASEBOARD_LOCAL_FAST_WORKERS": "0",
    "PHASEBOARD_TORCH_THREADS": "0",  # 0: leave torch's default (one thread per core)
}
PROCESSES_ENV = {"PHASEBOARD_LOCAL_POOL": "processes"}  # the batched path, workers as processes
BASELINE_REF = "e0b6e1b"  # a commit running restricted LLCs as one job per checkpoint


def train(config: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], list[Any], float]:
    """(checkpoints, logged points, seconds): the demo's training, kept in memory."""
    import torch

    task = _get_task(config)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ckpts, points = [], []
    for point in task.train(checkpoint_steps=checkpoint_schedule(config)):
        points.append((point.step, point.metrics))
        if point.state_dict is not None:
            ckpts.append((point.step, point.state_dict))
    return ckpts, points, time.perf_counter() - t0


@contextmanager
def server(home: Path, env: dict[str, str]) -> Any:
    """`phaseboard up` on a free port with ``env`` added to its environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = start_server(url, Settings(home=home), Console(quiet=True))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def upload(url: str, name: str, config: dict, llc: dict, ckpts: list, points: list) -> Any:
    """A run with the demo's config whose checkpoints queue nothing on upload."""
    pb = Phaseboard(url)
    run = pb.run(
        name,
        task="modular_addition",
        task_config=_json_config(config),
        analysis_config={"llc": llc, "analyses": []},
    )
    for step, metrics in points:
        run.log(step, metrics)
    for step, sd in ckpts:
        run.log_checkpoint(step, sd)
    run.flush()
    return run


def per_job_at(ref: str, config: dict, llc: dict, ckpts: list, timeout_s: float) -> float | None:
    """Seconds the restricted LLCs of ``ckpts`` take on version ``ref``'s own server and
    defaults; None (with the reason printed) where this checkout cannot produce that tree."""
    import torch

    try:
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"   (no per-job figure at {ref}: git archive failed: {exc})")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            tf.extractall(tree, filter="data")
        saved = Path(tmp) / "checkpoints.pt"
        torch.save(ckpts, saved)
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "per_job_at_ref.py"), "--tree", str(tree)]
            + ["--home", str(Path(tmp) / "home"), "--checkpoints", str(saved)]
            + ["--task-config", json.dumps(_json_config(config)), "--llc", json.dumps(llc)]
            + ["--timeout", str(timeout_s)],
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd=tree,
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise SystemExit(f"per-job path at {ref} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def jobs_by_kind(run: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for job in run.client.request(
        "GET", "/api/jobs", params={"run_id": run.id, "limit": 5000}
    ).json()["jobs"]:
        out.setdefault(job["kind"], []).append(job)
    return out


def wait_all(run: Any, kinds: list[str], timeout_s: float, watch_phases: bool) -> dict[str, float]:
    """Queue ``kinds``; poll until every job is final. Times in seconds since queueing."""
    t0 = time.perf_counter()
    run.analyze(lenses=kinds)
    marks: dict[str, float] = {}
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(0.5)
        now = time.perf_counter() - t0
        jobs = jobs_by_kind(run)
        if "first_llc" not in marks and any(j["state"] == "done" for j in jobs.get("llc", [])):
            marks["first_llc"] = now
        if watch_phases and "first_llc" in marks and "first_phases" not in marks:
            # Boundaries re-detected with LLC points (loss-only ones may come earlier).
            results = run.client.request(
                "GET", f"/api/runs/{run.id}/results", params={"kind": "phases"}
            ).json()["results"]
            if any((r["values"] or {}).get("llc_points") for r in results):
                marks["first_phases"] = now
        for kind, js in jobs.items():  # when each kind's last job finished
            if f"{kind} done" not in marks and all(j["state"] in ("done", "cancelled") for j in js):
                marks[f"{kind} done"] = now
        states = [j["state"] for js in jobs.values() for j in js]
        failed = [j for js in jobs.values() for j in js if j["state"] == "failed"]
        if failed:
            raise SystemExit(f"job failed: {failed[0]['kind']}: {failed[0]['error'][:500]}")
        finished = bool(states) and all(s in ("done", "cancelled") for s in states)
        phased = not watch_phases or any(j["state"] == "done" for j in jobs.get("phases", []))
        if finished and phased:
            marks["all"] = now
            return marks
    raise SystemExit(f"not done within {timeout_s:.0f} s: {marks}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the `demo --quick` config")
    ap.add_argument("--checkpoints", type=int, help="override the number of checkpoints")
    ap.add_argument("--device", default="cpu", help="worker device: cpu or cuda")
    ap.add_argument("--baseline-checkpoints", type=int, default=0, help="0: every checkpoint")
    ap.add_argument("--skip-full", action="store_true", help="only part B")
    ap.add_argument("--skip-baseline", action="store_true", help="only part A")
    ap.add_argument(
        "--baseline-ref",
        "--issue-baseline",  # its former name, used by the commands in bench/RESULTS.md
        default=BASELINE_REF,
        metavar="REF",
        help="also time the per-job path of this commit ('' to skip)",
    )
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    config = dict(QUICK_CONFIG if args.quick else FULL_CONFIG)
    if args.checkpoints:
        config["num_checkpoints"] = args.checkpoints
    llc = dict(QUICK_LLC if args.quick else FULL_LLC)
    device_env = {"PHASEBOARD_WORKER_DEVICES": args.device, "PHASEBOARD_AUTO_ANALYSES": ""}
    print(f"cores {os.cpu_count()}, device {args.device}, load {os.getloadavg()[0]:.1f}")
    ckpts, points, train_s = train(config)
    print(f"trained {config['steps']} steps in {train_s:.0f} s: {len(ckpts)} checkpoints")
    n = min(args.baseline_checkpoints or len(ckpts), len(ckpts))
    subset = [ckpts[round(i * (len(ckpts) - 1) / max(n - 1, 1))] for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_full:
            with server(Path(tmp) / "full", device_env) as url:
                run = upload(url, "full", config, llc, ckpts, points)
                marks = wait_all(run, DEMO_KINDS, args.timeout, watch_phases=True)
                run.finish()  # while its server still answers (else the client spools it)
            gap = marks.get("first_phases", float("nan")) - marks["first_llc"]
            print(
                f"A. full demo analyses, {len(ckpts)} checkpoints: all done {marks['all']:.0f} s"
                f" ({marks['all'] / 60:.1f} min; target < 5 min); first LLC batch "
                f"{marks['first_llc']:.0f} s; first phase boundaries {gap:.0f} s after it "
                "(target < 60 s)"
            )
            done = {k: v for k, v in marks.items() if k.endswith(" done")}
            print(
                "   last job of each kind: " + ", ".join(f"{k} {v:.0f} s" for k, v in done.items())
            )
        if args.skip_baseline:
            print(f"load average at the end {os.getloadavg()[0]:.1f}")
            return
        with server(Path(tmp) / "batched", device_env) as url:
            run = upload(url, "batched", config, llc, subset, points)
            batched = wait_all(run, ["llc_restricted"], args.timeout, watch_phases=False)["all"]
            run.finish()
        with server(Path(tmp) / "processes", {**device_env, **PROCESSES_ENV}) as url:
            run = upload(url, "processes", config, llc, subset, points)
            procs = wait_all(run, ["llc_restricted"], args.timeout, watch_phases=False)["all"]
            run.finish()
        with server(Path(tmp) / "per-job", {**device_env, **PER_JOB_ENV}) as url:
            run = upload(url, "per-job", config, llc, subset, points)
            per_job = wait_all(run, ["llc_restricted"], args.timeout, watch_phases=False)["all"]
            run.finish()
    at_ref = None
    if args.baseline_ref:
        at_ref = per_job_at(args.baseline_ref, config, llc, subset, args.timeout)
    print(
        f"B. restricted LLC on {n} checkpoints: per-job {per_job:.0f} s, batched {batched:.0f} s;"
        f" ratio {per_job / batched:.2f}x (target >= 5x)"
    )
    print(
        f"   batched with worker processes instead of threads: {procs:.0f} s"
        f" (threads {procs / batched:.2f}x faster; ratio with processes {per_job / procs:.2f}x)"
    )
    if at_ref is not None:
        print(
            f"   the per-job path at {args.baseline_ref} (its own server and defaults):"
            f" {at_ref:.0f} s; ratio {at_ref / batched:.2f}x"
            " (target >= 5x)"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
