"""The Host allow-list: a request naming another host is refused before anything else runs.

A DNS-rebinding page (``attacker.example`` resolving to 127.0.0.1) sends ``Host:
attacker.example`` and a matching ``Origin``; the cross-site guard alone took that for this
server's own page. Now it is a 421 in the JSON error shape, and nothing is stored.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from tests.server.test_hardening import full_state

EVIL = "attacker.example"


def _client(make_settings, base_url: str, **overrides: object) -> TestClient:  # type: ignore[no-untyped-def]
    settings = make_settings(**{"allowed_hosts": "", **overrides})
    return TestClient(create_app(settings), base_url=base_url)


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765", "http://LOCALHOST"],
)
def test_loopback_names_are_answered_by_default(make_settings, base_url: str) -> None:
    with _client(make_settings, base_url) as client:
        assert client.get("/api/health").status_code == 200
        assert client.post("/api/runs", json={"name": "r"}).status_code == 201


def test_a_rebinding_page_is_refused_before_anything_runs(make_settings, tmp_path) -> None:
    settings = make_settings(allowed_hosts="")
    before = full_state(settings)
    headers = {"Origin": f"http://{EVIL}:8765", "Sec-Fetch-Site": "same-origin"}
    marker = tmp_path / "pwned"
    body = {
        "name": "rebound",
        "task": "torch_module",
        "task_config": {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}},
    }
    with TestClient(create_app(settings), base_url=f"http://{EVIL}:8765") as client:
        for resp in (
            client.post("/api/runs", json=body, headers=headers),
            client.get("/api/runs", headers=headers),
            client.get("/", headers=headers),
            client.get("/api/health"),
        ):
            assert resp.status_code == 421, resp.text
            assert resp.json()["error"] == "misdirected_request"
            assert (
                EVIL in resp.json()["detail"]
                and "PHASEBOARD_ALLOWED_HOSTS" in resp.json()["detail"]
            )
            assert resp.headers["x-content-type-options"] == "nosniff"
    assert full_state(settings) == before
    assert not marker.exists()


def test_the_public_url_and_listed_hosts_are_answered(make_settings) -> None:
    settings = dict(public_url="https://board.lab.example", allowed_hosts="gpu-box, 10.0.0.7")
    for base_url in ("https://board.lab.example", "http://gpu-box:8765", "http://10.0.0.7"):
        with TestClient(create_app(make_settings(**settings)), base_url=base_url) as client:
            assert client.get("/api/health").status_code == 200, base_url
    with TestClient(create_app(make_settings(**settings)), base_url=f"http://{EVIL}") as client:
        assert client.get("/api/health").status_code == 421


def test_a_star_turns_the_check_off(make_settings) -> None:
    with _client(make_settings, f"http://{EVIL}", allowed_hosts="*") as client:
        assert client.get("/api/health").status_code == 200


def test_a_bound_host_name_is_answered(make_settings) -> None:
    with TestClient(
        create_app(make_settings(allowed_hosts="", host="workstation.local")),
        base_url="http://workstation.local:8765",
    ) as client:
        assert client.get("/api/health").status_code == 200
