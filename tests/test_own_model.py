"""A researcher's own small model end to end, as bench/own_model.py does it, smaller: a GPT-2
trained with ``transformers.Trainer`` on the standard library's source, log-spaced
``checkpoint-N/`` folders, ``phaseboard ingest DIR --data train=... --data test=...`` into a
live server with its local worker pool and its defaults (no LLC settings of the run's own).
The server calibrates first and runs every default lens: no job fails, every checkpoint has
an LLC estimate with the calibrated settings, most of them ok, and the server's memory stays
bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bench.own_model import PeakRSS, build_case, phaseboard_up
from phaseboard.server.commands.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
SHAPE = {"n_embd": 32, "n_layer": 2, "n_head": 2}  # 27k parameters at a context of 32
TIMEOUT_S = 900.0
RSS_LIMIT = 2 * 2**30


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_case(
        "gpt2", tmp_path_factory.mktemp("own"), max_steps=300, checkpoints=8, batch_size=16,
        train_bytes=80_000, test_bytes=8_000, shape=SHAPE, context=32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A fresh `phaseboard up` in its own process (SQLite, local pool): (url, pid)."""
    with phaseboard_up(tmp_path_factory.mktemp("own-home")) as (url, pid):
        yield url, pid


def _wait(client: httpx.Client, run_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        jobs = client.get("/api/jobs", params={"run_id": run_id, "limit": 5000}).json()
        active = sum(jobs["counts"][s] for s in ("queued", "running", "waiting"))
        if jobs["total"] and not active:
            return jobs
        if time.monotonic() > deadline:
            table = [(j["kind"], j["state"], j["progress_msg"]) for j in jobs["jobs"]]
            pytest.fail(f"analyses not done in {TIMEOUT_S:.0f} s: {table}")
        time.sleep(1.0)


@dataclass
class Analysed:
    """What the server made of the ingested run once every job ended."""

    jobs: dict[str, Any]
    run: dict[str, Any]
    points: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    peak_rss: int  # the server's process and its workers'
    steps: list[int]


@pytest.fixture(scope="module")
def analysed(case: Any, server: tuple[str, int]) -> Analysed:
    assert case.steps[0] == 0 and len(case.steps) == 8
    url, pid = server
    with PeakRSS(pid) as rss:
        out = CliRunner().invoke(app, [
            "ingest", str(case.folder), "--run", "own", "--url", url,
            "--data", f"train={case.train}", "--data", f"test={case.test}",
        ])  # fmt: skip
        assert out.exit_code == 0, out.output
        assert "task hf_causal_lm" in " ".join(out.output.split())
        with httpx.Client(base_url=url, timeout=30) as client:
            run_id = next(r["id"] for r in client.get("/api/runs").json() if r["name"] == "own")
            jobs = _wait(client, run_id)
            run = client.get(f"/api/runs/{run_id}").json()
            points = client.get(f"/api/runs/{run_id}/llc").json()["points"]
            checkpoints = client.get(f"/api/runs/{run_id}/checkpoints").json()
    return Analysed(jobs, run, points, checkpoints, rss.peak, list(case.steps))


def test_an_ingested_trainer_run_is_calibrated_then_fully_analysed_within_bounded_memory(
    analysed: Analysed,
) -> None:
    jobs, run, points = analysed.jobs, analysed.run, analysed.points
    failed = [(j["kind"], j["error"]) for j in jobs["jobs"] if j["state"] == "failed"]
    assert not failed
    done = {j["kind"] for j in jobs["jobs"] if j["state"] == "done"}
    assert {"calibrate", "metrics", "llc", "llc_restricted", "phases"} <= done
    record = run["analysis_config"]["llc_calibration"]
    chosen = record["recommended"]  # a setting ok everywhere, or the sound fallback
    assert chosen is not None, record["reason"]
    llc = run["analysis_config"]["llc"]
    assert (llc["lr"], llc["localization"]) == (chosen["lr"], chosen["localization"])
    # Every checkpoint has its estimate, computed after the calibration with its settings;
    # one whose weights equal a later step's is flagged and skipped (a Trainer's first steps
    # can leave the weights unchanged).
    assert len(analysed.checkpoints) == len(analysed.steps)
    distinct = [c["step"] for c in analysed.checkpoints if c["duplicate_of_step"] is None]
    assert len(distinct) >= len(analysed.steps) - 1
    llc_jobs = [j for j in jobs["jobs"] if j["kind"] == "llc"]
    assert len(llc_jobs) == len(distinct) == len(points)
    assert sorted(p["step"] for p in points) == sorted(distinct)
    assert all(j["config"]["lr"] == llc["lr"] for j in llc_jobs)
    assert all(p["restrictions"] for p in points)  # per-head restricted LLCs too
    assert analysed.peak_rss < RSS_LIMIT, f"peak RSS {analysed.peak_rss / 2**30:.2f} GB"


@pytest.mark.xfail(
    strict=True,
    reason="known gap: after the automatic calibration most estimates of a language model are "
    "still judged not converged or biased (too few draws at the step sizes that stay in the "
    "basin; the lr / 2 check compares chains with half the Langevin time)",
)
def test_most_trained_checkpoints_get_an_ok_estimate_after_the_automatic_calibration(
    analysed: Analysed,
) -> None:
    record = analysed.run["analysis_config"]["llc_calibration"]
    verdicts = [p["verdict"] for p in analysed.points]
    trained = [p["verdict"] for p in analysed.points if p["step"] >= analysed.steps[2]]
    assert record["recommended"] is not None and not record.get("fallback"), record["reason"]
    assert sum(v == "ok" for v in trained) > len(trained) / 2, verdicts
