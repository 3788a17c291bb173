"""A malformed value is a 4xx naming it, on SQLite and PostgreSQL, and nothing is stored:
free-form JSON, LLC settings, series step ranges, tensor layouts and dtypes, multipart
boundaries. A run stored with bad JSON by an older version no longer breaks the runs list.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient

from phaseboard.server.settings import Settings
from tests.server.test_hardening import full_state

# Raw JSON (Python's parser reads every one of these; PostgreSQL refuses the first five).
BAD_JSON = {
    "lone surrogate": '"\\udc00"',
    "NUL": '"a\\u0000b"',
    "NaN": "NaN",
    "Infinity": "-Infinity",
    "1e400": "1e400",
    "2**64": str(2**64),
    "deep": "[" * 40 + "]" * 40,
}
PROBLEMS = {
    "lone surrogate": "lone UTF-16 surrogate",
    "NUL": "NUL character",
    "NaN": "not finite",
    "Infinity": "not finite",
    "1e400": "not finite",
    "2**64": "64-bit range",
    "deep": "nested deeper than 32",
}


def _post(client: TestClient, path: str, raw: str, method: str = "POST"):  # type: ignore[no-untyped-def]
    return client.request(
        method, path, content=raw.encode(), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("field", ["config", "task_config", "analysis_config"])
@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_json_values_are_a_422_naming_the_field_and_nothing_is_stored(
    client: TestClient, settings: Settings, field: str, case: str
) -> None:
    run_id = client.post("/api/runs", json={"name": "kept"}).json()["id"]
    before = full_state(settings)
    value = BAD_JSON[case]
    for raw, method, path in (
        (f'{{"name": "r", "{field}": {{"k": {{"x": [1, {value}]}}}}}}', "POST", "/api/runs"),
        (f'{{"{field}": {{"k": {value}}}}}', "PATCH", f"/api/runs/{run_id}"),
    ):
        resp = _post(client, path, raw, method)
        assert resp.status_code == 422, resp.text
        detail = resp.json()["detail"]
        assert detail.startswith(f"{field}: ") and PROBLEMS[case] in detail, detail
    key = _post(client, "/api/runs", f'{{"name": "r", "{field}": {{"\\udc00": 1}}}}')
    assert key.status_code == 422 and "a key with a lone UTF-16 surrogate" in key.text
    assert full_state(settings) == before
    assert client.get("/api/runs").status_code == 200


def test_the_header_form_refuses_bad_json_too(client: TestClient, settings: Settings) -> None:
    run_id = client.post("/api/runs", json={"name": "r"}).json()["id"]
    before = full_state(settings)
    for case, value in BAD_JSON.items():
        form = {"task": "", "task_config": f'{{"k": {value}}}', "tags": "", "notes": ""}
        resp = client.patch(f"/runs/{run_id}/header", data=form)
        assert resp.status_code == 422, (case, resp.text)
        assert PROBLEMS[case] in resp.json()["detail"]
    assert full_state(settings) == before


def test_names_and_tags_with_a_lone_surrogate_are_refused(client: TestClient) -> None:
    for raw in ('{"name": "\\udc00x"}', '{"name": "r", "tags": ["\\ud800"]}'):
        resp = _post(client, "/api/runs", raw)
        assert resp.status_code == 422, resp.text
    assert client.get("/api/runs").json() == []


def test_a_run_stored_with_bad_json_by_an_older_version_reads_back(
    make_settings, tmp_path: Path
) -> None:
    """SQLite kept such rows (PostgreSQL refuses them); every read of the list used to be a
    500 until the run was deleted."""
    from phaseboard.server.app import create_app

    url = f"sqlite:///{tmp_path / 'old.db'}"
    settings = make_settings(database_url=url)
    from phaseboard.server.migrate import upgrade

    upgrade(settings)
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json={"name": "old"}).json()["id"]
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE runs SET config = :c, summary = :s WHERE id = :id"),
                {"c": '{"k": "\\udc00", "n": NaN, "i": Infinity}', "s": '{"x": "\\ud800"}',
                 "id": run_id},
            )  # fmt: skip
        engine.dispose()
        listed = client.get("/api/runs")
        assert listed.status_code == 200, listed.text
        assert listed.json()[0]["config"] == {"k": "\ufffd", "n": None, "i": None}
        assert client.get(f"/api/runs/{run_id}").status_code == 200
        assert client.get("/").status_code == 200
        assert client.get(f"/runs/{run_id}").status_code == 200


LLC_BAD = [
    ('{"lr": 1e-3, "localization": 100, "n_beta": Infinity}', "n_beta"),
    ('{"lr": 1e-3, "localization": 100, "n_beta": NaN}', "n_beta"),
    ('{"lr": 1e308, "localization": 100}', "lr"),
    ('{"lr": NaN, "localization": 100}', "lr"),
    ('{"lr": 1e-3, "localization": 1e400}', "localization"),
    ('{"lr": 1e-3, "localization": 100, "sampler": "os.system"}', "sampler"),
    ('{"lr": 1e-3, "localization": 100, "n_beta": -1}', "n_beta"),
]


@pytest.mark.parametrize(("raw", "field"), LLC_BAD, ids=[f for _, f in LLC_BAD])
def test_llc_settings_go_through_the_llc_limits(
    client: TestClient, settings: Settings, raw: str, field: str
) -> None:
    run_id = client.post("/api/runs", json={"name": "r", "task": "dln"}).json()["id"]
    before = full_state(settings)
    resp = _post(client, f"/api/runs/{run_id}/llc-settings", raw)
    assert resp.status_code == 422, resp.text
    assert field in resp.json()["detail"]
    assert full_state(settings) == before


@pytest.mark.parametrize("value", ["Infinity", "NaN", "1e400"])
def test_llc_overrides_of_any_analysis_are_finite(
    client: TestClient, settings: Settings, value: str
) -> None:
    """``llc`` is stored in every job's config, even one of a lens that does not read it."""
    run_id = client.post("/api/runs", json={"name": "r", "task": "dln"}).json()["id"]
    before = full_state(settings)
    for llc in (f'{{"rmsprop_eps": {value}}}', f'{{"n_beta": {value}}}'):
        raw = f'{{"kinds": ["metrics"], "llc": {llc}}}'
        resp = _post(client, f"/api/runs/{run_id}/analyses", raw)
        assert resp.status_code == 422, resp.text
        assert "finite" in resp.json()["detail"]
    assert full_state(settings) == before


def test_a_series_spanning_the_largest_step_reads_on_both_stores(client: TestClient) -> None:
    run_id = client.post("/api/runs", json={"name": "r"}).json()["id"]
    top = 2**53 - 1
    steps = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2**40, top - 1, top]
    points = [{"step": s, "name": "loss", "value": float(i)} for i, s in enumerate(steps)]
    assert client.post(f"/api/runs/{run_id}/metrics", json=points).status_code == 200
    for max_points in (10, 200_000):
        resp = client.get(f"/api/runs/{run_id}/series?name=loss&max_points={max_points}")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["steps"][0] == 0 and body["steps"][-1] == top
        assert body["total_points"] == len(steps)
    assert client.get(f"/api/runs/{run_id}/plotdata?max_points=10").status_code == 200


def _torch_file(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


ODD_TENSORS = {
    "meta": (lambda: torch.empty(3, device="meta"), "meta"),
    "sparse": (lambda: torch.eye(3).to_sparse(), "sparse"),
    "sparse_csr": (lambda: torch.eye(3).to_sparse_csr(), "sparse"),
    "nested": (
        lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]),
        "nested",
    ),
    "complex128": (lambda: torch.zeros(3, dtype=torch.complex128), "complex128"),
    "quantized": (
        lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8),
        "quantized",
    ),
}


@pytest.mark.parametrize("kind", list(ODD_TENSORS))
def test_unsupported_tensor_layouts_and_dtypes_are_named_in_a_422(
    client: TestClient, settings: Settings, kind: str
) -> None:
    build, word = ODD_TENSORS[kind]
    run_id = client.post("/api/runs", json={"name": "r"}).json()["id"]
    before = full_state(settings)
    uploads = {
        "checkpoints": {"w": build(), "b": torch.zeros(2)},
        "datasets": {"tokens": build()},
    }
    for route, obj in uploads.items():
        files = {"file": ("w.pt", _torch_file(obj), "application/octet-stream")}
        resp = client.post(
            f"/api/runs/{run_id}/{route}", files=files, data={"step": "1", "name": "train"}
        )
        assert resp.status_code == 422, (route, resp.text)
        assert word in resp.json()["detail"], resp.json()["detail"]
    assert full_state(settings) == before


def test_a_multipart_boundary_over_256_characters_is_a_413_in_the_json_shape(
    client: TestClient, settings: Settings
) -> None:
    run_id = client.post("/api/runs", json={"name": "r"}).json()["id"]
    before = full_state(settings)
    boundary = "b" * 300
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="step"\r\n\r\n1\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    for route in ("checkpoints", "datasets"):
        resp = client.post(f"/api/runs/{run_id}/{route}", content=body, headers=headers)
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "payload_too_large"
        assert "256" in resp.json()["detail"]
    assert full_state(settings) == before


def test_json_bodies_with_bad_values_never_reach_postgresql_as_500(client: TestClient) -> None:
    """The schemathesis-style sweep, by hand: every free-form field with every bad value."""
    for case, value in BAD_JSON.items():
        raw = json.dumps({"name": f"n-{case}"})[:-1] + f', "config": {{"v": {value}}}}}'
        assert _post(client, "/api/runs", raw).status_code == 422, case
