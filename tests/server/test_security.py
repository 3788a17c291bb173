"""Cross-site writes are refused (store unchanged); every response has security headers."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from phaseboard.server.settings import Settings
from tests.server.conftest import safetensors_bytes
from tests.server.test_hardening import full_state

EVIL = "https://evil.example"


def _upload() -> dict[str, Any]:
    return {
        "files": {"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")},
        "data": {"step": "1"},
    }


# Headers a browser sends with a cross-site "simple" request (no custom headers possible).
CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Origin": EVIL},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
    {"Origin": EVIL},  # an older browser: Origin only
    {"Origin": "null"},  # a sandboxed frame or a file: page
]


@pytest.mark.parametrize(
    "headers", CROSS_SITE, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items())
)
def test_cross_site_no_cors_writes_are_refused_and_store_nothing(
    client: TestClient, settings: Settings, run_id: int, headers: dict[str, str]
) -> None:
    before = full_state(settings)
    attempts = [
        client.post(f"/api/runs/{run_id}/checkpoints", headers=headers, **_upload()),
        client.post("/api/runs", headers=headers, content=b'{"name":"x"}'),
        client.post(f"/api/runs/{run_id}/metrics", headers=headers, json=[]),
        client.delete(f"/api/runs/{run_id}", headers=headers),
        client.patch(f"/runs/{run_id}/header", headers=headers, data={"notes": "pwned"}),
    ]
    for resp in attempts:
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"] == "cross_site"
        assert resp.headers["x-content-type-options"] == "nosniff"
    assert full_state(settings) == before


@pytest.mark.parametrize(
    "headers",
    [
        {},  # the Python client, curl: no Origin, no Sec-Fetch-*
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
        {"Origin": "http://testserver"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Sec-Fetch-Site": "cross-site", "Origin": EVIL, "X-Phaseboard": "1"},  # preflighted
        {"Sec-Fetch-Site": "cross-site", "Origin": EVIL, "HX-Request": "true"},
    ],
    ids=["no-browser", "same-origin", "own-origin", "none", "x-phaseboard", "htmx"],
)
def test_same_origin_and_non_browser_writes_still_work(
    client: TestClient, headers: dict[str, str]
) -> None:
    resp = client.post("/api/runs", headers=headers, json={"name": "mine"})
    assert resp.status_code == 201, resp.text


def test_public_url_counts_as_our_own_origin(make_settings) -> None:
    from phaseboard.server.app import create_app

    settings = make_settings(public_url="https://board.example.org/")
    with TestClient(create_app(settings)) as client:
        ok = client.post(
            "/api/runs", headers={"Origin": "https://board.example.org"}, json={"name": "a"}
        )
        assert ok.status_code == 201, ok.text
        bad = client.post("/api/runs", headers={"Origin": EVIL}, json={"name": "b"})
        assert bad.status_code == 403


def test_cross_site_reads_are_not_refused(client: TestClient, run_id: int) -> None:
    resp = client.get(f"/api/runs/{run_id}", headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 200


@pytest.mark.parametrize("path", ["/", "/api/health", "/api/runs/999", "/nope", "/static/app.js"])
def test_every_response_has_the_security_headers(client: TestClient, path: str) -> None:
    resp = client.get(path)
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    # Only the runs list (plotly's WebGL parallel coordinates compile code with new Function).
    assert ("unsafe-eval" in csp) == (path == "/")
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "same-origin"
