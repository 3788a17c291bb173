"""Helpers for the API tests: a snapshot of everything the store holds, sample checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from phaseboard.analysis.checkpoints import save_safetensors_bytes
from phaseboard.server.settings import Settings


@dataclass(frozen=True)
class StoreState:
    """Row counts of the tables an upload touches, and every file under the blob root."""

    rows: dict[str, int]
    files: frozenset[str]

    @property
    def blobs(self) -> frozenset[str]:
        return frozenset(f for f in self.files if not f.startswith("tmp/"))


def store_state(settings: Settings) -> StoreState:
    engine = sa.create_engine(
        settings.database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    with engine.connect() as conn:
        rows = {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("runs", "checkpoints", "metric_points", "jobs")
        }
    engine.dispose()
    root = Path(settings.storage_dir)  # type: ignore[arg-type]
    files = frozenset(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return StoreState(rows, files)


@pytest.fixture
def snapshot(settings: Settings):  # type: ignore[no-untyped-def]
    """``snapshot()`` -> the store's current ``StoreState``."""
    return lambda: store_state(settings)


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g)}


def safetensors_bytes(seed: int = 0) -> bytes:
    return save_safetensors_bytes(tiny_state_dict(seed))


@pytest.fixture
def run_id(client) -> int:  # type: ignore[no-untyped-def]
    resp = client.post("/api/runs", json={"name": "run-a"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]
