"""Every bad request is a 4xx naming the problem, never a 500, and stores nothing.

Each case runs on SQLite and PostgreSQL against a seeded store (a run with a checkpoint,
metrics, a phase boundary and a share link); the whole store - every row of every table and
every file under the blob root - is compared before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.models import Base
from phaseboard.server.settings import Settings
from tests.server.conftest import safetensors_bytes

HUGE = 652942260495584145178624  # > 2^63
OFFSET = 7495652762223579053564528427008
I64_OVER = 2**63  # 9223372036854775808
I32_OVER = 2**31


def full_state(settings: Settings) -> tuple[dict[str, list[tuple[str, ...]]], frozenset[str]]:
    """Every row of every table (as text, sorted) and every file under the blob root."""
    url = settings.database_url.replace("postgresql://", "postgresql+psycopg://")
    engine = sa.create_engine(url)
    rows: dict[str, list[tuple[str, ...]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows[table.name] = sorted(
                tuple(str(v) for v in r) for r in conn.execute(sa.select(table))
            )
    engine.dispose()
    root = Path(settings.storage_dir)  # type: ignore[arg-type]
    files = frozenset(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return rows, files


@pytest.fixture
def seeded(client: TestClient) -> dict[str, Any]:
    """A run with a checkpoint, two metric points, a boundary and a share link."""
    run = client.post("/api/runs", json={"name": "seeded", "notes": "n", "tags": ["a"]})
    assert run.status_code == 201, run.text
    rid = run.json()["id"]
    up = client.post(
        f"/api/runs/{rid}/checkpoints",
        files={"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")},
        data={"step": "10"},
    )
    assert up.status_code == 201, up.text
    pts = [{"step": 1, "name": "loss", "value": 1.0}, {"step": 2, "name": "loss", "value": 0.5}]
    assert client.post(f"/api/runs/{rid}/metrics", json=pts).status_code == 200
    phase = client.post(f"/api/runs/{rid}/phases", json={"step": 5, "label": "p"})
    assert phase.status_code == 201, phase.text
    share = client.post("/api/shares", json={"view": f"/runs/{rid}"})
    assert share.status_code == 201, share.text
    return {
        "run": rid,
        "ckpt": up.json()["id"],
        "phase": phase.json()["id"],
        "slug": share.json()["slug"],
    }


def _upload(step: str) -> dict[str, Any]:
    return {
        "files": {"file": ("w.safetensors", safetensors_bytes(1), "application/octet-stream")},
        "data": {"step": step},
    }


NUL = "a\x00b"
# (method, path template, request kwargs, status, a word the detail must contain)
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # integers past a SQL BIGINT as ids, offsets, limits, steps
    ("GET", f"/api/runs/{HUGE}/phases", {}, 422, "run_id"),
    ("GET", f"/api/runs/{HUGE}", {}, 422, "run_id"),
    ("PATCH", f"/api/runs/{HUGE}", {"json": {"notes": "x"}}, 422, "run_id"),
    ("DELETE", f"/api/runs/{HUGE}", {}, 422, "run_id"),
    # ids are 32-bit INTEGER keys on PostgreSQL: 2^31 is out of range there
    ("GET", f"/api/runs/{I32_OVER}", {}, 422, "run_id"),
    ("GET", f"/api/runs/{I32_OVER}/llc", {}, 422, "run_id"),
    ("GET", f"/api/jobs/{I32_OVER}", {}, 422, "job_id"),
    ("DELETE", f"/api/phases/{I32_OVER}", {}, 422, "boundary_id"),
    ("GET", f"/api/checkpoints/{I32_OVER}", {}, 422, "checkpoint_id"),
    ("GET", f"/compare?pick={I32_OVER}", {}, 422, "pick"),
    ("POST", "/api/shares", {"json": {"view": f"/runs/{I32_OVER}"}}, 422, "view"),
    ("GET", f"/api/runs?offset={OFFSET}", {}, 422, "offset"),
    ("GET", f"/api/runs?limit={HUGE}", {}, 422, "limit"),
    ("GET", f"/api/jobs?offset={OFFSET}", {}, 422, "offset"),
    ("GET", f"/api/jobs?run_id={HUGE}", {}, 422, "run_id"),
    ("GET", f"/api/jobs/{HUGE}", {}, 422, "job_id"),
    ("POST", f"/api/jobs/{HUGE}/cancel", {}, 422, "job_id"),
    ("POST", f"/api/jobs/{HUGE}/retry", {}, 422, "job_id"),
    ("GET", f"/api/checkpoints/{HUGE}", {}, 422, "checkpoint_id"),
    ("GET", f"/api/checkpoints/{HUGE}/download", {}, 422, "checkpoint_id"),
    ("DELETE", f"/api/checkpoints/{I64_OVER}", {}, 422, "checkpoint_id"),
    ("PATCH", f"/api/phases/{HUGE}", {"json": {"label": "x"}}, 422, "boundary_id"),
    ("DELETE", f"/api/phases/{HUGE}", {}, 422, "boundary_id"),
    ("GET", f"/api/runs/{HUGE}/series?name=loss", {}, 422, "run_id"),
    ("GET", f"/api/runs/{HUGE}/plotdata", {}, 422, "run_id"),
    ("GET", f"/runs/{HUGE}", {}, 422, "run_id"),
    ("GET", f"/compare?pick={HUGE}", {}, 422, "pick"),
    ("GET", "/runs/{run}/checkpoints?page=" + str(OFFSET), {}, 422, "page"),
    ("POST", f"/api/runs/{HUGE}/metrics", {"json": []}, 422, "run_id"),
    (
        "POST",
        "/api/runs/{run}/metrics",
        {"json": [{"step": I64_OVER, "name": "l", "value": 1}]},
        422,
        "step",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"checkpoint_ids": [HUGE]}},
        422,
        "checkpoint_ids",
    ),
    ("POST", "/api/runs/{run}/checkpoints", _upload(str(I64_OVER)), 422, "step"),
    ("POST", "/api/runs/{run}/checkpoints", _upload("-1"), 422, "step"),
    ("POST", "/api/runs/{run}/checkpoints", _upload("1_000"), 422, "ASCII digits"),
    ("POST", "/api/runs/{run}/checkpoints", _upload("٥"), 422, "ASCII digits"),
    ("POST", "/api/runs/{run}/checkpoints", _upload("+5"), 422, "ASCII digits"),
    ("GET", "/api/runs?offset=1_000", {}, 422, "ASCII digits"),
    ("GET", "/api/runs/٥", {}, 422, "ASCII digits"),
    # NUL characters (PostgreSQL text cannot hold them)
    ("POST", "/api/runs", {"json": {"name": NUL}}, 422, "name"),
    ("POST", "/api/runs", {"json": {"name": "ok", "notes": NUL}}, 422, "notes"),
    ("POST", "/api/runs", {"json": {"name": "ok", "tags": [NUL]}}, 422, "tags"),
    ("PATCH", "/api/runs/{run}", {"json": {"name": NUL}}, 422, "name"),
    ("PATCH", "/api/runs/{run}", {"json": {"notes": NUL}}, 422, "notes"),
    (
        "POST",
        "/api/runs/{run}/metrics",
        {"json": [{"step": 3, "name": NUL, "value": 1}]},
        422,
        "name",
    ),
    ("POST", "/api/runs/{run}/phases", {"json": {"step": 1, "label": NUL}}, 422, "label"),
    ("PATCH", "/api/phases/{phase}", {"json": {"label": NUL}}, 422, "label"),
    ("GET", "/api/runs?q=a%00b", {}, 422, "q"),
    ("GET", "/api/runs?tag=%00", {}, 422, "tag"),
    ("GET", "/?q=a%00b", {}, 422, "q"),
    ("GET", "/api/runs/{run}/series?name=lo%00ss", {}, 422, "name"),
    ("GET", "/api/shares/ab%00cd", {}, 422, "slug"),
    ("GET", "/s/ab%00cd", {}, 422, "slug"),
    ("POST", "/api/shares", {"json": {"view": "/?q=a%00b"}}, 422, "NUL"),
    ("POST", "/api/shares", {"json": {"view": "/\x00"}}, 422, "view"),
    ("PATCH", "/runs/{run}/header", {"data": {"notes": NUL}}, 422, "notes"),
    ("GET", "/api/jobs?kind=a%00b", {}, 422, "kind"),
    # LLC settings: LLCConfig's rules and the server's bounds, at the API
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"num_chains": 1_000_000_000}}},
        422,
        "llc.num_chains",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"num_chains": -1}}},
        422,
        "num_chains",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"lr": "abc"}}},
        422,
        "llc.lr",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"lr": -1.0}}},
        422,
        "lr",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"num_chains": True}}},
        422,
        "llc.num_chains",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"num_draws": 10**9}}},
        422,
        "llc.num_draws",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"num_chains": 200, "num_draws": 90_000}}},
        422,
        "chain-steps",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"sampler": "hmc"}}},
        422,
        "llc.sampler",
    ),
    (
        "POST",
        "/api/runs/{run}/analyses",
        {"json": {"kinds": ["llc"], "llc": {"no_such": 1}}},
        422,
        "llc.no_such",
    ),
    ("POST", "/api/runs/{run}/analyses", {"json": {"kinds": ["nope"]}}, 422, "kinds"),
    (
        "POST",
        "/api/runs",
        {"json": {"name": "x", "analysis_config": {"llc": {"num_chains": 0}}}},
        422,
        "analysis_config.llc",
    ),
    (
        "POST",
        "/api/runs",
        {"json": {"name": "x", "analysis_config": {"llc": {"num_chains": 10**6}}}},
        422,
        "analysis_config.llc.num_chains",
    ),
    (
        "POST",
        "/api/runs",
        {"json": {"name": "x", "analysis_config": {"analyses": ["zzz"]}}},
        422,
        "analysis_config.analyses",
    ),
    (
        "PATCH",
        "/api/runs/{run}",
        {"json": {"analysis_config": {"llc": {"lr": "abc"}}}},
        422,
        "analysis_config.llc.lr",
    ),
    ("PATCH", "/api/runs/{run}", {"json": {"name": None}}, 422, "name"),
]


@pytest.mark.slow
def test_every_bad_request_is_a_4xx_naming_the_problem_and_stores_nothing(
    client: TestClient, settings: Settings, seeded: dict[str, Any]
) -> None:
    """Table-driven (one seeded store per backend): each case's status, body and no change."""
    failures = []
    for method, path, kwargs, status, word in CASES:
        before = full_state(settings)
        resp = client.request(method, path.format(**seeded), **kwargs)
        where = f"{method} {path} {str(kwargs)[:80]}"
        try:
            body = resp.json()
        except ValueError:
            body = {"raw": resp.text[:200]}
        if resp.status_code != status or set(body) != {"error", "detail"}:
            failures.append(f"{where}: {resp.status_code} {body}")
        elif word not in body["detail"]:
            failures.append(f"{where}: detail does not name {word!r}: {body['detail']}")
        if full_state(settings) != before:
            failures.append(f"{where}: the store changed")
    assert not failures, "\n".join(failures)


def test_metric_points_over_the_cap_are_a_413_naming_the_cap(make_settings) -> None:
    settings = make_settings(max_metric_points=10)
    with TestClient(create_app(settings)) as client:
        rid = client.post("/api/runs", json={"name": "cap"}).json()["id"]
        before = full_state(settings)
        pts = [{"step": s, "name": "loss", "value": 1.0} for s in range(11)]
        resp = client.post(f"/api/runs/{rid}/metrics", json=pts)
        assert resp.status_code == 413, resp.text
        assert "at most 10 per request" in resp.json()["detail"]
        assert full_state(settings) == before
        assert client.post(f"/api/runs/{rid}/metrics", json=pts[:10]).status_code == 200


def test_a_body_over_the_byte_cap_is_a_413_before_it_is_parsed(make_settings) -> None:
    settings = make_settings(max_json_mb=0.01)  # ~10 KB
    with TestClient(create_app(settings)) as client:
        rid = client.post("/api/runs", json={"name": "bytes"}).json()["id"]
        before = full_state(settings)
        pts = [{"step": s, "name": "loss", "value": 1.0} for s in range(1000)]
        resp = client.post(f"/api/runs/{rid}/metrics", json=pts)
        assert resp.status_code == 413 and "PHASEBOARD_MAX_JSON_MB" in resp.json()["detail"]
        assert full_state(settings) == before


def test_a_non_ascii_bearer_token_is_a_401(make_settings) -> None:
    settings = make_settings(api_token="s3cret")
    with TestClient(create_app(settings)) as client:
        before = full_state(settings)
        headers = {"Authorization": "Bearer s3cr\u00e9t".encode()}
        resp = client.post("/api/runs", json={"name": "x"}, headers=headers)
        assert resp.status_code == 401, resp.text
        assert full_state(settings) == before
        ok = client.post(
            "/api/runs", json={"name": "x"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 201


def test_null_clears_notes_tags_and_configs_as_the_schema_says(
    client: TestClient, seeded: dict[str, Any]
) -> None:
    body = {"notes": None, "tags": None, "task_config": None, "analysis_config": None}
    resp = client.patch(f"/api/runs/{seeded['run']}", json=body)
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert (run["notes"], run["tags"], run["task_config"], run["analysis_config"]) == (
        "",
        [],
        {},
        {},
    )
    assert run["name"] == "seeded"


def test_valid_llc_settings_within_the_bounds_are_accepted(client: TestClient) -> None:
    cfg = {"llc": {"num_chains": 8, "num_draws": 200, "lr": 0.001, "n_beta": 10}}
    resp = client.post("/api/runs", json={"name": "ok-llc", "analysis_config": cfg})
    assert resp.status_code == 201, resp.text
    assert resp.json()["analysis_config"] == cfg
