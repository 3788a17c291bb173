"""With API_TOKEN set, every write needs ``Authorization: Bearer <token>``; reads stay open."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from tests.server.conftest import safetensors_bytes, store_state

TOKEN = "s3cret-token"


@pytest.fixture
def secured(make_settings):  # type: ignore[no-untyped-def]
    settings = make_settings(api_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def _writes(run_id: int, ckpt_id: int) -> list[tuple[str, str, dict]]:
    return [
        ("post", "/api/runs", {"json": {"name": "new"}}),
        ("patch", f"/api/runs/{run_id}", {"json": {"notes": "x"}}),
        ("delete", f"/api/runs/{run_id}", {}),
        ("post", f"/api/runs/{run_id}/checkpoints",
         {"files": {"file": ("c", safetensors_bytes(7))}, "data": {"step": "2"}}),
        ("post", f"/api/runs/{run_id}/metrics", {"json": [{"step": 1, "name": "l", "value": 1}]}),
        ("delete", f"/api/checkpoints/{ckpt_id}", {}),
    ]  # fmt: skip


def _seed(client: TestClient) -> tuple[int, int]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    rid = client.post("/api/runs", json={"name": "r"}, headers=auth).json()["id"]
    ck = client.post(
        f"/api/runs/{rid}/checkpoints",
        files={"file": ("c", safetensors_bytes())},
        data={"step": "1"},
        headers=auth,
    )
    assert ck.status_code == 201, ck.text
    return rid, ck.json()["id"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN, "Bearer "])
def test_writes_without_the_token_are_401_and_store_unchanged(secured, header) -> None:
    client, settings = secured
    rid, ck = _seed(client)
    before = store_state(settings)
    headers = {} if header is None else {"Authorization": header}
    for method, url, kwargs in _writes(rid, ck):
        resp = getattr(client, method)(url, headers=headers, **kwargs)
        assert resp.status_code == 401, (method, url, resp.text)
        assert "Bearer" in resp.json()["detail"]
        assert resp.headers["www-authenticate"] == "Bearer"
    assert store_state(settings) == before


def test_writes_with_the_token_succeed(secured) -> None:
    client, _ = secured
    rid, ck = _seed(client)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    expected = [201, 200, 204, 404, 404, 404]  # after the DELETE the run is gone
    got = [getattr(client, m)(u, headers=auth, **kw).status_code for m, u, kw in _writes(rid, ck)]
    assert got == expected


def test_reads_stay_open(secured) -> None:
    client, _ = secured
    rid, ck = _seed(client)
    for url in ["/api/health", "/api/runs", f"/api/runs/{rid}", f"/api/runs/{rid}/checkpoints",
                f"/api/checkpoints/{ck}", f"/api/checkpoints/{ck}/download",
                f"/api/runs/{rid}/series/names"]:  # fmt: skip
        assert client.get(url).status_code == 200, url


def test_no_token_configured_means_open_writes(client) -> None:
    assert client.post("/api/runs", json={"name": "open"}).status_code == 201
