"""The tracker client inside a training loop: steps, config, summary, status, offline spool.

A real server runs in a thread on a loopback port that the test owns, so it can be stopped
and started again on the same address while the client keeps logging.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from typer.testing import CliRunner

from phaseboard import Phaseboard, PhaseboardClientError, Run, flatten_metrics
from phaseboard.analysis.tasks import get_task
from phaseboard.server.app import create_app
from phaseboard.server.commands.cli import app as cli_app
from phaseboard.server.migrate import upgrade
from phaseboard.server.settings import Settings


def _bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@contextmanager
def serve_on(home: Path, port: int, **settings_kw: object) -> Iterator[str]:
    """A migrated server on exactly ``port`` (uvicorn in a thread); stopped on exit."""
    sock = _bound_socket(port)
    settings = Settings(home=home, queue="none", port=port, **settings_kw)  # type: ignore[arg-type]
    upgrade(settings)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def port() -> int:
    with _bound_socket() as s:
        return s.getsockname()[1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _client(url: str, tmp_path: Path, **kw: object) -> Phaseboard:
    opts: dict[str, object] = {
        "flush_interval_s": 0.05,
        "max_retries": 1,
        "backoff_s": 0.05,
        "reconnect_s": 0.1,
        "heartbeat_s": 0.2,
        "spool_dir": tmp_path / "spool",
    }
    opts.update(kw)
    return Phaseboard(url, **opts)  # type: ignore[arg-type]


def _api(url: str, path: str) -> dict:
    return httpx.get(f"{url}/api{path}", timeout=10).json()


def test_flatten_joins_nested_keys_with_a_slash() -> None:
    assert flatten_metrics({"train": {"loss": 1, "acc": {"top1": 2}}, "lr": 3}) == {
        "train/loss": 1,
        "train/acc/top1": 2,
        "lr": 3,
    }


def test_auto_and_explicit_steps_mix_by_the_documented_rules(
    home: Path, port: int, tmp_path: Path
) -> None:
    with serve_on(home, port) as url:
        pb = _client(url, tmp_path)
        run = pb.run("steps", config={"lr": 1e-3})
        run.log({"a": 1.0})  # step 0
        run.log({"a": 2.0})  # step 1
        run.log({"a": 3.0}, step=10)  # explicit: current step becomes 11
        run.log({"a": 4.0})  # step 11
        run.log(5, {"a": 5.0})  # the older form: step 5, current stays 12
        run.log({"a": 6.0}, commit=False)  # step 12, not advanced
        run.log({"b": {"c": 7.0}})  # step 12 too, then 13; nested -> "b/c"
        assert run.step == 13
        run.finish()
        a = run.series("a")
        assert a["steps"] == [0, 1, 5, 10, 11, 12]
        assert a["values"] == [1.0, 2.0, 5.0, 3.0, 4.0, 6.0]
        assert run.series("b/c")["steps"] == [12]
        # A run found again by name resumes after its largest step.
        again = pb.run("steps")
        assert again.step == 13
        again.finish()
        pb.close()


def test_config_is_stored_apart_from_task_config_and_summary_is_kept_by_the_server(
    home: Path, port: int, tmp_path: Path
) -> None:
    with serve_on(home, port) as url:
        pb = _client(url, tmp_path)
        run = pb.run(
            "cfg",
            task="dln",
            task_config={"widths": [2, 2]},
            config={"lr": 0.01, "optimizer": {"name": "adamw", "betas": [0.9, 0.99]}},
        )
        run.config.update({"warmup": 100})
        run.config["lr"] = 0.02
        for i, loss in enumerate([3.0, 1.0, 2.0]):
            run.log({"loss": loss}, step=i)
        summary = run.summary
        assert summary["loss"] == {"last": 2.0, "last_step": 2, "min": 1.0, "max": 3.0}
        run.finish()
        data = _api(url, f"/runs/{run.id}")
        assert data["task_config"] == {"widths": [2, 2]}
        assert data["config"]["lr"] == 0.02 and data["config"]["warmup"] == 100
        assert data["config"]["optimizer"]["name"] == "adamw"
        assert data["status"] == "finished"
        assert "phaseboard run" in run._repr_html_().lower() and f"/runs/{run.id}" in (
            run._repr_html_()
        )
        pb.close()


def test_a_bad_point_is_dropped_with_a_warning_and_its_batch_arrives(
    home: Path, port: int, tmp_path: Path
) -> None:
    with serve_on(home, port) as url:
        pb = _client(url, tmp_path, flush_every=10_000)
        run = pb.run("nul")
        with pytest.warns(UserWarning, match="control character"):
            for i in range(100):
                run.log({"loss": float(i), "bad\x00name" if i == 50 else "ok": 1.0}, step=i)
        run.finish()
        assert run.series("loss", max_points=1000)["total_points"] == 100
        assert run.series("ok", max_points=1000)["total_points"] == 99
        pb.close()


def test_a_4xx_is_never_retried_and_only_the_refused_point_is_lost() -> None:
    """The server refuses any batch holding the point named "x" (as for a NUL on PostgreSQL)."""
    calls: list[int] = []
    stored: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        points = json.loads(request.read())
        calls.append(len(points))
        if any(p["name"] == "x" for p in points):
            return httpx.Response(422, json={"error": "bad_input", "detail": "0.name: bad"})
        stored.extend(p["name"] for p in points)
        return httpx.Response(200, json={"accepted": len(points), "names": []})

    pb = Phaseboard("http://pb.test", transport=httpx.MockTransport(handler), max_retries=5)
    run = Run(pb, {"id": 1, "name": "r"})
    run._closed = False
    with pytest.warns(UserWarning, match="refused point 'x'"):
        for i in range(100):
            run._buffer.append({"step": i, "name": "x" if i == 37 else "y", "value": 1.0})
        run._send_batch()
    assert len(stored) == 99
    # Bisection: one request per halving level on the bad side plus its good halves — and no
    # request is ever repeated (a 4xx is not retried).
    assert calls[0] == 100 and len(calls) <= 2 * 7 + 1
    pb._http.close()


def test_server_down_at_start_spools_then_the_client_uploads_once_back(
    home: Path, port: int, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{port}"
    pb = _client(url, tmp_path)
    model = torch.nn.Linear(3, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = pb.run("down-at-start", config={"lr": 0.1})  # nothing listens: no exception
        for step in range(50):
            run.log({"loss": 1.0 / (step + 1)})
        run.log_checkpoint(10, model)
        run.config.update({"batch": 32})
        run.flush()
        assert run.spooled and run.id is None
        cannot = [w for w in caught if "cannot reach" in str(w.message)]
        assert len(cannot) == 1  # warns once
        with serve_on(home, port):
            deadline = time.monotonic() + 20
            while run.spooled and time.monotonic() < deadline:
                time.sleep(0.05)  # the flush thread notices the server and uploads the spool
            assert not run.spooled, "client did not reconnect"
            for step in range(50, 60):
                run.log({"loss": 1.0 / (step + 1)})
            run.finish()
            data = _api(url, f"/runs/{run.id}")
            assert run.series("loss", max_points=1000)["total_points"] == 60
            assert [c["step"] for c in run.checkpoints()] == [10]
            assert data["config"] == {"lr": 0.1, "batch": 32}
            assert data["status"] == "finished"
    pb.close()
    assert not list((tmp_path / "spool").iterdir()), "an uploaded spool is removed"


def test_server_going_away_mid_run_never_raises_and_loses_nothing(
    home: Path, port: int, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{port}"
    pb = _client(url, tmp_path)
    with serve_on(home, port):
        run = pb.run("goes-away")
        for step in range(20):
            run.log({"loss": float(step)})
        run.flush()
    with pytest.warns(UserWarning, match="spooling run 'goes-away'"):
        for step in range(20, 40):
            run.log({"loss": float(step)})
            run.log_checkpoint(step, {"w": torch.ones(2) * step}) if step == 30 else None
        run.flush()
    assert run.spooled
    with serve_on(home, port):
        run.finish()  # uploads the spool itself
        assert run.series("loss", max_points=1000)["steps"] == list(range(40))
        assert [c["step"] for c in run.checkpoints()] == [30]
    pb.close()


def test_offline_mode_spools_and_phaseboard_sync_uploads_exactly_once(
    home: Path, port: int, tmp_path: Path
) -> None:
    pb = _client("http://127.0.0.1:9", tmp_path, mode="offline")
    with pb.run("offline-run", task="dln", config={"lr": 3e-4}) as run:
        for step in range(30):
            run.log({"train": {"loss": 2.0 - step / 30}})
        run.log_checkpoint(5, get_task("dln").build_model())  # fits the task: checked at upload
    assert run.id is None and run.spool_path is not None
    spool = run.spool_path
    runner = CliRunner()
    with serve_on(home, port) as url:
        first = runner.invoke(cli_app, ["sync", str(spool.parent), "--url", url])
        assert first.exit_code == 0, first.output
        assert "30 points, 1 checkpoints, complete" in first.output
        second = runner.invoke(cli_app, ["sync", str(spool), "--url", url])
        assert "skipped (synced)" in second.output
        runs = _api(url, "/runs?q=offline-run")
        assert len(runs) == 1
        rid = runs[0]["id"]
        series = _api(url, f"/runs/{rid}/series?name=train/loss")
        assert series["total_points"] == 30
        assert len(_api(url, f"/runs/{rid}/checkpoints")) == 1
        assert runs[0]["config"] == {"lr": 3e-4} and runs[0]["status"] == "finished"
        assert runs[0]["summary"]["train/loss"]["last_step"] == 29
    pb.close()


@pytest.mark.slow
def test_status_running_then_finished_or_crashed_when_heartbeats_stop(
    home: Path, port: int, tmp_path: Path
) -> None:
    with serve_on(home, port, run_crashed_after_s=1.0) as url:
        pb = _client(url, tmp_path, heartbeat_s=0.2)
        ok = pb.run("beats")
        time.sleep(1.5)  # longer than the threshold: heartbeats keep it running
        assert _api(url, f"/runs/{ok.id}")["status"] == "running"
        ok.finish()
        assert _api(url, f"/runs/{ok.id}")["status"] == "finished"

        dead = pb.run("dies")
        dead._closed = True  # the process "dies": heartbeats stop, no finish
        dead._stop.set()
        assert _api(url, f"/runs/{dead.id}")["status"] == "running"
        time.sleep(1.6)
        assert _api(url, f"/runs/{dead.id}")["status"] == "crashed"
        assert [r["name"] for r in _api(url, "/runs?status=crashed")] == ["dies"]

        with pytest.raises(RuntimeError), pb.run("raises") as boom:
            raise RuntimeError("nan loss")
        assert _api(url, f"/runs/{boom.id}")["status"] == "crashed"
        pb.close()


def test_log_after_finish_is_a_usage_error(home: Path, port: int, tmp_path: Path) -> None:
    pb = _client("http://127.0.0.1:9", tmp_path, mode="offline")
    run = pb.run("closed")
    run.finish()
    with pytest.raises(PhaseboardClientError, match="finished"):
        run.log({"x": 1.0})
    pb.close()


def test_points_carry_the_client_wall_time_or_an_imported_one(tmp_path: Path) -> None:
    import json

    pb = _client("http://127.0.0.1:9", tmp_path, mode="offline")
    run = pb.run("stamps")
    t0 = time.time()
    run.log({"loss": 1.0})
    run.log({"loss": 0.5}, step=7, wall_time=1_600_000_000.25)
    run.flush()
    assert run.spool_path is not None
    lines = [json.loads(x) for x in (run.spool_path / "metrics.jsonl").read_text().splitlines()]
    assert t0 <= lines[0]["wall_time"] <= time.time()
    assert lines[1] == {"step": 7, "name": "loss", "value": 0.5, "wall_time": 1_600_000_000.25}
    run._closed = True
    pb._http.close()
