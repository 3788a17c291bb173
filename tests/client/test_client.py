"""The client (``phaseboard.Phaseboard``) against a real server (uvicorn on a loopback port)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load

from phaseboard import Phaseboard, PhaseboardClientError, Run, state_dict_to_safetensors
from tests.live_server import serve

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("open"), queue="local", start_workers=False) as u:
        yield u


@pytest.fixture(scope="module")
def token_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("token"), token=TOKEN) as u:
        yield u


@pytest.fixture
def pb(url: str) -> Iterator[Phaseboard]:
    client = Phaseboard(url, token="", flush_interval_s=0.2)
    yield client
    client.close()


def test_run_is_created_once_then_fetched_by_name(pb: Phaseboard) -> None:
    first = pb.run("get-or-create", tags=["a"], notes="first")
    again = pb.run("get-or-create", notes="ignored: the run has notes")
    assert again.id == first.id
    assert again.data["notes"] == "first"
    assert first.url == f"{pb.url}/runs/{first.id}"
    assert [r["name"] for r in pb.runs(q="get-or-create")] == ["get-or-create"]


def test_logged_metrics_arrive_in_batches_without_blocking(url: str) -> None:
    pb = Phaseboard(url, flush_every=250, flush_interval_s=0.2)
    run = pb.run("batched")
    t0 = time.perf_counter()
    for step in range(1000):
        run.log(step, {"train_loss": 1.0 / (step + 1), "lr": torch.tensor(0.1)})
    assert time.perf_counter() - t0 < 1.0, "log() must only buffer"
    run.finish()
    series = run.series("train_loss", max_points=5000)
    assert series["total_points"] == 1000
    assert series["values"][0] == 1.0 and series["steps"][-1] == 999
    assert run.series("lr")["values"][:1] == [pytest.approx(0.1)]
    assert run.points_sent == 2000
    pb.close()


def test_non_finite_values_are_dropped_with_a_warning(pb: Phaseboard) -> None:
    run = pb.run("nan-loss")
    with pytest.warns(UserWarning, match="non-finite loss"):
        run.log(0, {"loss": float("nan"), "acc": 0.5})
    run.finish()
    assert run.series("acc")["values"] == [0.5]


def test_context_manager_flushes_on_exit(pb: Phaseboard) -> None:
    with pb.run("ctx") as run:
        run.log(3, {"x": 1.5})
    assert run.series("x")["steps"] == [3]
    with pytest.raises(PhaseboardClientError, match="finished"):
        run.log(4, {"x": 2.0})


def test_checkpoint_of_a_module_is_uploaded_once_and_duplicates_are_done(pb: Phaseboard) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    run = pb.run("ckpts")
    record = run.log_checkpoint(10, model)
    assert record is not None and record["step"] == 10 and record["n_tensors"] == 4
    assert run.log_checkpoint(10, model) is None  # deduped locally
    # A fresh client (a restarted script) gets 409 from the server: still "already done".
    other = Phaseboard(pb.url).run("ckpts")
    assert other.log_checkpoint(10, model.state_dict()) is None
    other.client.close()
    assert [c["step"] for c in run.checkpoints()] == [10]


def test_tied_weights_serialise(tmp_path: Path) -> None:
    emb = torch.nn.Embedding(5, 3)
    sd = {"embed.weight": emb.weight, "unembed.weight": emb.weight, "step": 3}
    buf = io.BytesIO()
    state_dict_to_safetensors(sd, buf)
    tensors = load(buf.getvalue())
    assert set(tensors) == {"embed.weight", "unembed.weight"}
    assert torch.equal(tensors["embed.weight"], tensors["unembed.weight"])


def test_server_refusal_carries_its_code_and_message(pb: Phaseboard) -> None:
    run = pb.run("garbage")
    with pytest.raises(PhaseboardClientError) as info:
        run.upload_file(1, io.BytesIO(b"not a checkpoint at all"), filename="x.pt")
    assert info.value.status_code == 422
    assert info.value.code == "bad_checkpoint"
    assert "nothing was stored" in str(info.value)


def test_analyze_queues_jobs(pb: Phaseboard) -> None:
    from phaseboard.analysis.tasks import get_task

    config = {"p": 5, "d_model": 8, "n_heads": 2, "d_mlp": 8}
    run = pb.run("analyze-me", task="modular_addition", task_config=config)
    run.log_checkpoint(0, get_task("modular_addition", config).build_model())
    answer = run.analyze(["metrics"])
    assert len(answer["job_ids"]) == 1
    assert "metrics" in {j["lens"] for j in run.jobs()["jobs"]}
    assert run.analyze(kinds=["metrics"])["job_ids"] == answer["job_ids"]  # the older name
    with pytest.raises(ValueError, match="not both"):
        run.analyze(["metrics"], kinds=["llc"])


def test_token_server_refuses_writes_without_the_token(token_url: str) -> None:
    anonymous = Phaseboard(token_url, token="")
    with pytest.raises(PhaseboardClientError) as info:
        anonymous.run("needs-token")
    assert info.value.status_code == 401 and info.value.code == "unauthorized"
    anonymous.close()

    with Phaseboard(token_url, token=TOKEN) as pb:
        with pb.run("needs-token", tags=["t"]) as run:
            run.log(1, {"loss": 0.25})
            assert run.log_checkpoint(1, torch.nn.Linear(2, 1)) is not None
        assert run.series("loss")["values"] == [0.25]


def test_unreachable_server_is_retried_with_backoff_then_reported() -> None:
    pb = Phaseboard("http://127.0.0.1:9", max_retries=2, backoff_s=0.05)
    t0 = time.perf_counter()
    with pytest.raises(PhaseboardClientError, match="cannot reach") as info:
        pb.runs()
    assert info.value.status_code is None
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # two sleeps: 0.05, then 0.1
    pb._http.close()


def test_5xx_answers_are_retried_and_uploads_resent_from_the_start() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) < 3:
            return httpx.Response(503, json={"error": "unavailable", "detail": "busy"})
        return httpx.Response(201, json={"id": 1, "step": 5})

    pb = Phaseboard("http://pb.test", backoff_s=0.01, transport=httpx.MockTransport(handler))
    run = Run(pb, {"id": 1, "name": "r"})
    assert run.log_checkpoint(5, {"w": torch.ones(3)}) == {"id": 1, "step": 5}
    # The file was rewound for each try: every body carries the whole checkpoint.
    assert len(bodies) == 3 and len({len(b) for b in bodies}) == 1
    assert all(b'"data_offsets":[0,12]' in b for b in bodies)
    pb._http.close()


def test_log_never_blocks_while_the_server_is_away(tmp_path: Path) -> None:
    pb = Phaseboard("http://127.0.0.1:9", max_retries=0, flush_interval_s=0.05, spool_dir=tmp_path)
    run = Run(pb, {"id": 1, "name": "offline"})
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="spooling run 'offline'"):
        for step in range(200):
            run.log(step, {"loss": 1.0})
        time.sleep(0.3)  # the flusher tries (and fails) meanwhile
    assert time.perf_counter() - t0 < 2.0
    run.flush()
    assert run.spool_path is not None
    lines = (run.spool_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 200  # nothing lost: every point is in the spool
    run._closed = True
    pb._http.close()


def test_log_dataset_uploads_tensors_and_arrays_once(pb: Phaseboard) -> None:
    import numpy as np

    run = pb.run("with-data")
    record = run.log_dataset("train", torch.arange(300, dtype=torch.int32).view(3, 100) % 40)
    assert record is not None
    assert (record["shape"], record["dtype"], record["max_token"]) == ([3, 100], "int32", 39)
    assert run.log_dataset("code", np.arange(50, dtype=np.int64))["n_tokens"] == 50
    assert run.log_dataset("train", torch.arange(10)) is None  # the name is taken: kept as was
    assert [d["name"] for d in run.datasets()] == ["code", "train"]
    with pytest.raises(PhaseboardClientError, match="must be integers"):
        run.log_dataset("floats", torch.rand(10))
