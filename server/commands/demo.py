"""``phaseboard demo``: grok modular addition on this CPU and watch it in the dashboard.

Trains the built-in ``modular_addition`` task (small p, full batch, AdamW with strong weight
decay) through memorisation into generalisation, logs every eval and log-spaced checkpoints
through the client ``phaseboard.Phaseboard`` (what a training script does), calibrates the LLC
settings (a ``calibrate`` job; its recommendation becomes the run's settings), queues metrics,
LLC and restricted-LLC jobs, and prints the run page. If no server answers at the URL and the
URL is local, ``phaseboard up`` is started in a subprocess and kept serving until Ctrl+C.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from phaseboard import Phaseboard, PhaseboardClientError, Run
from phaseboard.server.settings import Settings

# Chosen so the test accuracy jumps well after the train accuracy (grokking) within a short
# CPU run (full: memorised by ~300 steps, generalises at ~1500-2500; quick: a quarter of it).
FULL_CONFIG: dict[str, Any] = {
    "p": 31,
    "train_fraction": 0.5,
    "d_model": 32,
    "n_heads": 4,
    "d_mlp": 128,
    "lr": 1e-2,
    "weight_decay": 1.0,
    "steps": 3000,
    "eval_every": 25,
    "num_checkpoints": 32,
    "seed": 0,
}
QUICK_CONFIG: dict[str, Any] = {
    **FULL_CONFIG,
    "p": 23,
    "steps": 1000,
    "eval_every": 50,
    "num_checkpoints": 10,
}
# LLC budgets small enough for a CPU worker to keep up (docs/trusting-the-llc.md: how to
# calibrate properly).
# Stored in the run's analysis_config, so the jobs queued on each upload and those queued by
# analyze() share one config (and are deduplicated).
FULL_LLC: dict[str, Any] = {"num_chains": 4, "num_draws": 100, "num_burnin_steps": 20}
QUICK_LLC: dict[str, Any] = {"num_chains": 2, "num_draws": 40, "num_burnin_steps": 10}
# Run-level lenses too: without them the demo's run page says "No essential-dynamics result
# yet" forever (the run's own analyses list replaces the server's auto_analyses).
ANALYSES = ["metrics", "llc", "llc_restricted", "essential_dynamics", "learning_order"]
# A small calibration grid (6 settings, run in one vectorised batch) tried on the first
# settled, the middle and the last checkpoint before any LLC job is queued.
CALIBRATION_GRID: dict[str, Any] = {"lrs": [1e-4, 3e-4, 1e-3], "localizations": [100.0, 1000.0]}
CALIBRATION_WAIT_S = 180.0
CALIBRATION_PICKUP_S = 15.0  # a calibration no worker has started by then is left queued


@dataclass
class DemoResult:
    run_id: int
    run_url: str
    checkpoints: int
    final_metrics: dict[str, float]
    jobs: Any


def _json_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _get_task(config: dict[str, Any]) -> Any:
    try:
        from phaseboard.analysis.tasks import get_task
    except ImportError:  # registry not importable: use the class directly
        from phaseboard.analysis.tasks.modular_addition import ModularAddition

        return ModularAddition(config)
    return get_task("modular_addition", config)


def store_is_empty(settings: Settings) -> bool:
    """True when the database holds no run (``phaseboard up`` then suggests the demo)."""
    from sqlalchemy import func, select

    from phaseboard.server.db import Database
    from phaseboard.server.models import Run as RunRow

    db = Database(settings)
    try:
        with db.session() as session:
            return not session.scalar(select(func.count()).select_from(RunRow))
    except Exception:  # noqa: BLE001 - a hint must never stop the server from starting
        return False
    finally:
        db.dispose()


def is_local(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def start_server(url: str, settings: Settings, console: Console) -> subprocess.Popen[bytes]:
    """Start ``phaseboard up`` on the URL's host and port; wait until it answers."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 8765
    settings.ensure_dirs()
    log_path = Path(settings.home) / "demo-server.log"
    cmd = [sys.executable, "-c", "from server.commands.cli import app; app()", "up"]
    cmd += ["--host", host, "--port", str(port)]
    console.print(f"No server at {url}; starting [bold]phaseboard up[/bold] (log: {log_path})")
    env = {
        **os.environ,
        "PHASEBOARD_HOME": str(settings.home),
        "PHASEBOARD_DATABASE_URL": settings.database_url,
        "PHASEBOARD_STORAGE_DIR": str(settings.storage_dir),
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    probe = Phaseboard(url)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if probe.ping(timeout_s=1.0):
            return proc
        if proc.poll() is not None:
            raise PhaseboardClientError(
                f"phaseboard up exited with {proc.returncode}; see {log_path}"
            )
        time.sleep(0.3)
    proc.terminate()
    raise PhaseboardClientError(f"phaseboard up did not answer within 90 s; see {log_path}")


# Log-spaced in (step + offset): dense enough early for memorisation, and several checkpoints
# through the late grokking jump, without the near-duplicates of merging two grids.
SCHEDULE_OFFSET = 30.0


def checkpoint_schedule(config: dict[str, Any]) -> list[int]:
    """Exactly ``num_checkpoints`` unique log-spaced steps from 0 to ``steps``."""
    from phaseboard.analysis.tasks.base import log_spaced_steps

    return log_spaced_steps(config["steps"], config["num_checkpoints"], SCHEDULE_OFFSET)


def train_and_log(
    run: Run, config: dict[str, Any], console: Console
) -> tuple[int, dict[str, float]]:
    """Train the task, logging metrics and checkpoints; returns (checkpoints, final metrics)."""
    import torch

    task = _get_task(config)
    n_ckpt, last = 0, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one core
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("train", total=config["steps"], status="")
            for point in task.train(checkpoint_steps=checkpoint_schedule(config)):
                run.log(point.step, point.metrics)
                if point.state_dict is not None:
                    run.log_checkpoint(point.step, point.state_dict)
                    n_ckpt += 1
                last = point.metrics
                accs = {k: v for k, v in point.metrics.items() if k.endswith("acc")}
                status = " ".join(f"{k} {v:.2f}" for k, v in accs.items())
                progress.update(bar, completed=point.step, status=status)
    finally:
        torch.set_num_threads(threads)
    run.flush()
    return n_ckpt, last


def calibrate_llc(run: Run, console: Console) -> dict[str, Any] | None:
    """Queue ``calibrate`` on the run, wait for it, and use the recommended LLC settings.

    Returns the calibration (None if no worker finished it in time: then the run keeps
    its LLC settings and the calibration shows up on the run page when it is done).
    """
    run.flush()
    queued = run.analyze(lenses=["calibrate"], calibrate=CALIBRATION_GRID)
    (job_id,) = queued["job_ids"]
    console.print("calibrating the LLC settings (lr x localization) on 3 checkpoints ...")
    started = time.monotonic()
    while True:
        job = run.client.request("GET", f"/api/jobs/{job_id}").json()
        waited = time.monotonic() - started
        if job["state"] in ("done", "failed", "cancelled"):
            break
        if waited > CALIBRATION_WAIT_S or (
            job["state"] == "queued" and waited > CALIBRATION_PICKUP_S
        ):
            console.print("calibration still pending; LLC jobs use the demo's settings")
            return None
        time.sleep(0.5)
    if job["state"] != "done":
        console.print(f"calibration {job['state']}: {job.get('error') or ''}".strip())
        return None
    cal = run.client.request("GET", f"/api/runs/{run.id}/calibration").json()["calibration"]
    console.print(cal["reason"])
    rec = cal.get("recommended")
    if rec is not None:
        body = {"lr": rec["lr"], "localization": rec["localization"]}
        # Sets the run's LLC settings; its LLC jobs are queued by the caller with them.
        run.client.request("POST", f"/api/runs/{run.id}/llc-settings", json=body)
    return cal


def run_demo(
    url: str,
    *,
    quick: bool = False,
    token: str | None = None,
    name: str | None = None,
    console: Console | None = None,
    settings: Settings | None = None,
    serve: bool = True,
) -> DemoResult:
    """The whole demo; ``serve`` keeps a server this function started alive until Ctrl+C."""
    console = console or Console()
    settings = settings or Settings()
    client = Phaseboard(url, token=token)
    proc = None
    if not client.ping():
        if not is_local(url):
            raise PhaseboardClientError(f"no Phaseboard server answers at {url}")
        proc = start_server(url, settings, console)
    try:
        config = dict(QUICK_CONFIG if quick else FULL_CONFIG)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        name = name or f"grokking-demo-{'quick-' if quick else ''}{stamp}"
        run = client.run(
            name,
            task="modular_addition",
            task_config=_json_config(config),
            tags=["demo", "grokking"],
            notes="Modular addition trained by `phaseboard demo`: memorisation, then grokking.",
            # Only metrics while training: LLC jobs wait for the calibration below.
            analysis_config={"analyses": ["metrics"], "llc": QUICK_LLC if quick else FULL_LLC},
        )
        stays_up = proc is None or serve  # a link only to a server that keeps answering
        console.print(f"Run [bold]{name}[/bold]" + (f": {run.url}" if stays_up else ""))
        t0 = time.monotonic()
        n_ckpt, last = train_and_log(run, config, console)
        console.print(
            f"trained {config['steps']} steps in {time.monotonic() - t0:.0f} s, "
            f"{n_ckpt} checkpoints; final " + ", ".join(f"{k}={v:.3f}" for k, v in last.items())
        )
        calibrate_llc(run, console)
        run.client.request(
            "PATCH",
            f"/api/runs/{run.id}",
            json={"analysis_config": {**run.refresh()["analysis_config"], "analyses": ANALYSES}},
        )
        jobs = run.analyze(lenses=ANALYSES)
        run.finish()
        console.print(f"queued analyses: {', '.join(ANALYSES)}")
        if stays_up:
            console.print(f"\nOpen the run page: [bold link={run.url}]{run.url}[/bold link]")
            console.print("Loss, LLC and phase boundaries appear there as the jobs finish.")
        else:
            console.print(
                "\nThe server started for this demo stops now (--no-serve); the queued "
                f"analyses of run [bold]{name}[/bold] resume with [bold]phaseboard up[/bold]."
            )
        result = DemoResult(run.id, run.url, n_ckpt, last, jobs)
        if proc is not None and serve:
            console.print("The server started for this demo keeps running; Ctrl+C stops it.")
            with contextlib.suppress(KeyboardInterrupt):
                proc.wait()
        return result
    finally:
        client.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
