"""`phaseboard ingest` and `phaseboard export` against a real server."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from phaseboard import Phaseboard
from phaseboard.server.commands.cli import app
from phaseboard.server.commands.ingest_dir import discover_checkpoints, step_from_path
from tests.live_server import serve

runner = CliRunner()


def _weights(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("ingest")) as u:
        yield u


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """step_*.pt, *.safetensors, HF checkpoint-N/ folders, TensorBoard events, and junk."""
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("run")
    torch.save(_weights(1), root / "step_100.pt")
    save_file(_weights(2), str(root / "ckpt_200.safetensors"))
    hf = root / "trainer" / "checkpoint-300"
    hf.mkdir(parents=True)
    save_file(_weights(3), str(hf / "model.safetensors"))
    torch.save({"state": {}}, hf / "optimizer.pt")  # not weights: ignored
    (hf / "trainer_state.json").write_text("{}")
    torch.save(_weights(4), root / "final.pt")  # no step in the name
    torch.save(_weights(5), root / "step_0100.pth")  # same step as step_100.pt
    writer = SummaryWriter(str(root / "tb"))
    for step in range(0, 301, 10):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    writer.add_scalar("eval/acc", 0.5, 300)
    writer.close()
    return root


def test_steps_are_read_from_names_or_a_regex() -> None:
    assert step_from_path(Path("step_1000.pt")) == 1000
    assert step_from_path(Path("out/checkpoint-250/model.safetensors")) == 250
    assert step_from_path(Path("ckpts/1500.safetensors")) == 1500
    assert step_from_path(Path("model_final.pt")) is None
    assert step_from_path(Path("model_v2_e7.pt"), r"_e(\d+)") == 7


def test_discovery_marks_what_it_cannot_import(run_dir: Path) -> None:
    items = {i.path: i for i in discover_checkpoints(run_dir)}
    assert items["final.pt"].detail.startswith("no step in the name")
    dupes = [items[n].detail for n in ("step_100.pt", "step_0100.pth")]
    assert sum(d.startswith("duplicate step") for d in dupes) == 1
    assert "trainer/checkpoint-300/optimizer.pt" not in items
    pending = sorted(i.step for i in items.values() if i.status == "pending")
    assert pending == [100, 200, 300]


def test_ingest_imports_then_a_second_run_skips_everything(url: str, run_dir: Path) -> None:
    args = ["ingest", str(run_dir), "--run", "imported", "--url", url]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    text = " ".join(first.output.split())
    assert "checkpoints: 3 imported, 2 skipped, 0 failed" in text
    assert "scalar series: 2 imported" in text

    pb = Phaseboard(url)
    run = pb.run("imported")
    assert [c["step"] for c in run.checkpoints()] == [100, 200, 300]
    loss = run.series("train/loss")
    assert loss["total_points"] == 31 and loss["values"][0] == 1.0
    assert run.series("eval/acc")["steps"] == [300]

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    text = " ".join(second.output.split())
    assert "checkpoints: 0 imported, 5 skipped, 0 failed" in text
    assert "scalar series: 0 imported, 2 skipped" in text
    assert "already on the server" in text
    assert len(run.checkpoints()) == 3
    pb.close()


def test_ingest_step_regex_override(url: str, tmp_path: Path) -> None:
    save_file(_weights(7), str(tmp_path / "model_v2_e7.safetensors"))
    result = runner.invoke(
        app, ["ingest", str(tmp_path), "--run", "regex", "--url", url, "--step-regex", r"_e(\d+)"]
    )
    assert result.exit_code == 0, result.output
    with Phaseboard(url) as pb:
        assert [c["step"] for c in pb.run("regex").checkpoints()] == [7]


def test_ingest_reports_rejected_files_and_fails(url: str, tmp_path: Path) -> None:
    (tmp_path / "step_5.pt").write_bytes(b"definitely not a checkpoint")
    result = runner.invoke(app, ["ingest", str(tmp_path), "--run", "broken", "--url", url])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "1 failed" in text and "bad_checkpoint" in text


def test_export_writes_series_as_csv_and_json(url: str, tmp_path: Path) -> None:
    with Phaseboard(url) as pb, pb.run("exported") as run:
        for step in range(5):
            run.log(step, {"loss": 1.0 - step / 10})
    out = tmp_path / "run.csv"
    result = runner.invoke(
        app, ["export", "exported", "--format", "csv", "--out", str(out), "--url", url]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    wall = float(rows[0].pop("wall_time"))  # when the client logged it
    assert abs(wall - time.time()) < 600
    assert rows[0] == {
        "section": "metric",
        "name": "loss",
        "restriction": "",
        "step": "0",
        "value": "1.0",
    }

    result = runner.invoke(app, ["export", "exported", "--format", "json", "--url", url])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["run"]["name"] == "exported"
    last = data["series"]["loss"][-1]
    assert {"step": last["step"], "value": last["value"]} == {"step": 4, "value": 0.6}
    assert last["wall_time"] >= wall
    assert data["results"] == [] and data["checkpoints"] == []


def test_export_of_a_missing_run_fails_clearly(url: str) -> None:
    result = runner.invoke(app, ["export", "no-such-run", "--url", url])
    assert result.exit_code == 1
    assert "no run named 'no-such-run'" in " ".join(result.output.split())


def _sharded_checkpoint(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    """What ``save_pretrained(max_shard_size=...)`` writes: two shards and their index."""
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[:2],
        "model-00002-of-00002.safetensors": names[2:],
    }
    folder.mkdir(parents=True)
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _big_weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        "a.weight": torch.randn(300, 7, generator=gen),
        "b.bias": torch.randn(5, generator=gen).to(torch.bfloat16),
        "c.weight": torch.randn(64, 64, generator=gen),
        "d.steps": torch.arange(10),
    }


def test_merged_shards_read_in_small_pieces_are_one_valid_file(tmp_path: Path) -> None:
    from safetensors.torch import load

    from phaseboard.server.shards import MergedSafetensors

    weights = _big_weights()
    _sharded_checkpoint(tmp_path / "ck", weights)
    with MergedSafetensors(tmp_path / "ck" / "model.safetensors.index.json") as merged:
        pieces = []
        while chunk := merged.read(1000):  # never more than one read buffer in memory
            assert len(chunk) <= 1000
            pieces.append(chunk)
        assert merged.seek(0, 2) == merged.size == sum(map(len, pieces))
    back = load(b"".join(pieces))
    assert set(back) == set(weights) and all(torch.equal(back[k], weights[k]) for k in weights)


def test_ingest_merges_sharded_weights_and_imports_trainer_log_history(
    url: str, tmp_path: Path
) -> None:
    from safetensors.torch import load

    weights = _big_weights()
    for step in (10, 20):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        _sharded_checkpoint(folder, weights)
        history = [
            {"epoch": 0.1 * s, "step": s, "loss": 2.0 / s, "learning_rate": 1e-3, "grad_norm": 1.5}
            for s in range(1, step + 1)
        ] + [{"epoch": 1.0, "step": step, "eval_loss": 0.5, "eval_runtime": 0.1}]
        state = {"global_step": step, "log_history": history}
        (folder / "trainer_state.json").write_text(json.dumps(state))
    result = runner.invoke(app, ["ingest", str(tmp_path / "out"), "--run", "sharded", "--url", url])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "checkpoints: 2 imported, 0 skipped, 0 failed" in text
    with Phaseboard(url) as pb:
        run = pb.run("sharded")
        ckpts = run.checkpoints()
        assert [c["step"] for c in ckpts] == [10, 20]
        got = load(pb.request("GET", ckpts[1]["download_url"]).content)
        assert all(torch.equal(got[k], weights[k]) for k in weights)
        loss = run.series("loss")
        assert loss["steps"] == list(range(1, 21)) and loss["values"][0] == 2.0
        assert run.series("eval_loss")["steps"] == [20]  # from the newest trainer_state.json
        assert run.series("learning_rate")["total_points"] == 20


def test_client_logs_a_compiled_model_and_a_misfit_is_refused_naming_tensors(url: str) -> None:
    from phaseboard import PhaseboardClientError
    from tests.server.jobs.conftest import TINY_TASK, state_dict

    sd = state_dict(0)
    with Phaseboard(url) as pb:
        run = pb.run("compiled", task="dln", task_config=TINY_TASK)
        record = run.log_checkpoint(0, {f"_orig_mod.{k}": v for k, v in sd.items()})
        assert record is not None and record["key_mapping"]["strip_prefix"] == "_orig_mod."
        with pytest.raises(PhaseboardClientError, match="missing from the checkpoint"):
            run.log_checkpoint(1, {k: v for k, v in sd.items() if k != "layers.0.weight"})
        assert [c["step"] for c in run.checkpoints()] == [0]
