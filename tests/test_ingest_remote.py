"""`phaseboard ingest s3://bucket/prefix`: the same walk as for a local folder, streamed from
a real S3 endpoint (moto's server on loopback) through fsspec: step files, a Hugging Face
checkpoint folder with sharded weights, TensorBoard scalars, a file with no step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from phaseboard import Phaseboard
from phaseboard.server.commands.cli import app
from phaseboard.server.commands.ingest_dir import discover_checkpoints
from phaseboard.server.commands.ingest_source import Source
from tests.live_server import serve
from tests.server.store.conftest import (  # noqa: F401 - fixtures
    S3Endpoint,
    aws_env,
    bucket,
    s3_endpoint,
)

runner = CliRunner()


def _weights(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}


def _sharded(folder: Path, seed: int) -> None:
    """``model.safetensors.index.json`` and two shards, as ``save_pretrained`` splits them."""
    import json

    w = _weights(seed)
    folder.mkdir(parents=True)
    save_file({"w": w["w"]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"b": w["b"]}, str(folder / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}  # fmt: skip
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture
def remote_dir(tmp_path: Path, s3_endpoint: S3Endpoint, bucket: str) -> str:  # noqa: F811
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path / "run"
    root.mkdir()
    torch.save(_weights(1), root / "step_100.pt")
    save_file(_weights(2), str(root / "ckpt_200.safetensors"))
    _sharded(root / "trainer" / "checkpoint-300", 3)
    torch.save(_weights(4), root / "final.pt")
    writer = SummaryWriter(str(root / "tb"))
    for step in range(0, 301, 10):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    writer.close()
    for path in root.rglob("*"):
        if path.is_file():
            key = f"exp/run-a/{path.relative_to(root).as_posix()}"
            s3_endpoint.client.upload_file(str(path), bucket, key)
    return f"s3://{bucket}/exp/run-a"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with serve(tmp_path / "server") as u:
        yield u


def test_remote_discovery_matches_a_local_walk(remote_dir: str) -> None:
    items = {i.path: i for i in discover_checkpoints(Source(remote_dir))}
    assert items["final.pt"].status == "skipped"
    merged = items["trainer/checkpoint-300/model.safetensors.index.json"]
    assert merged.status == "pending" and merged.step == 300 and merged.size > 0
    assert sorted(i.step for i in items.values() if i.status == "pending") == [100, 200, 300]


def test_ingest_from_s3_streams_checkpoints_and_scalars(url: str, remote_dir: str) -> None:
    args = ["ingest", remote_dir, "--run", "from-s3", "--url", url]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    text = " ".join(first.output.split())
    assert "checkpoints: 3 imported, 1 skipped, 0 failed" in text
    assert "scalar series: 1 imported" in text
    with Phaseboard(url) as pb:
        run = pb.run("from-s3")
        ckpts = {c["step"]: c for c in run.checkpoints()}
        assert sorted(ckpts) == [100, 200, 300]
        assert ckpts[300]["n_tensors"] == 2  # both shards merged into one checkpoint
        assert run.series("train/loss")["total_points"] == 31
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "already on the server" in second.output


def test_unreachable_remote_is_one_error_line(url: str, aws_env: dict[str, str]) -> None:  # noqa: F811
    result = runner.invoke(
        app, ["ingest", "s3://no-such-bucket-here/x", "--run", "r", "--url", url]
    )
    assert result.exit_code == 1
    assert "error" in result.output and "Traceback" not in result.output
