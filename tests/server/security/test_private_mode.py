"""``PHASEBOARD_PRIVATE=true``: reads need the token too; a browser signs in once; a share
link reads exactly its view's data and nothing else of the server (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.models import Result
from phaseboard.server.private import READ_COOKIE
from phaseboard.server.settings import Settings
from tests.server.conftest import safetensors_bytes

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def private_settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(private=True, api_token=TOKEN)


@pytest.fixture
def seeded(private_settings: Settings) -> Iterator[dict[str, Any]]:
    """Three runs (a, b, c; a tagged 'pair' with b), a checkpoint and a result of a."""
    with TestClient(create_app(private_settings)) as admin:
        ids = {}
        for name, tags in (("a", ["pair"]), ("b", ["pair"]), ("c", [])):
            body = {"name": name, "tags": tags, "config": {"secret_lr": 0.1}}
            resp = admin.post("/api/runs", json=body, headers=BEARER)
            assert resp.status_code == 201, resp.text
            ids[name] = resp.json()["id"]
        files = {"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")}
        ckpt = admin.post(
            f"/api/runs/{ids['a']}/checkpoints", files=files, data={"step": "1"}, headers=BEARER
        ).json()
        db = Database(private_settings)
        try:
            with db.session() as s:
                results = [Result(run_id=ids[n], kind="llc", values={"mean": 1.0}) for n in "ac"]
                s.add_all(results)
                s.flush()
                result_ids = {n: r.id for n, r in zip("ac", results, strict=True)}
        finally:
            db.dispose()
        yield {"ids": ids, "ckpt": ckpt["id"], "results": result_ids}


def _anonymous(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), follow_redirects=False)


def test_reads_need_the_token_and_pages_send_a_browser_to_sign_in(
    private_settings: Settings, seeded: dict[str, Any]
) -> None:
    a = seeded["ids"]["a"]
    with _anonymous(private_settings) as anon:
        for path in (
            "/api/runs",
            f"/api/runs/{a}",
            f"/api/runs/{a}/plotdata",
            f"/api/checkpoints/{seeded['ckpt']}/download",
            f"/api/results/{seeded['results']['a']}",
            "/api/jobs",
            "/openapi.json",
        ):
            resp = anon.get(path)
            assert resp.status_code == 401, (path, resp.text)
            assert resp.json()["error"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"
        for path in ("/", f"/runs/{a}", "/compare?runs=1,2", f"/runs/{a}/jobs"):
            resp = anon.get(path)
            assert resp.status_code == 303, path
            assert resp.headers["location"].startswith("/login?next=%2F")
        for path in ("/api/health", "/static/app.css", "/favicon.ico", "/login"):
            assert anon.get(path).status_code == 200, path
        with TestClient(create_app(private_settings)) as script:
            assert script.get("/api/runs", headers=BEARER).status_code == 200
            assert script.get(f"/runs/{a}", headers=BEARER).status_code == 200


def test_signing_in_sets_a_read_cookie_that_is_not_the_token_and_cannot_write(
    private_settings: Settings, seeded: dict[str, Any]
) -> None:
    with _anonymous(private_settings) as browser:
        wrong = browser.post("/login", data={"token": "guess", "next": "/"})
        assert wrong.status_code == 401 and "not this server" in wrong.text
        assert READ_COOKIE not in browser.cookies
        resp = browser.post("/login", data={"token": TOKEN, "next": "/runs/1?x=log"})
        assert resp.status_code == 303 and resp.headers["location"] == "/runs/1?x=log"
        cookie = resp.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
        assert TOKEN not in cookie
        assert browser.get("/").status_code == 200
        assert browser.get("/api/runs").status_code == 200
        # the cookie reads; it never writes (a cross-site form would carry it)
        write = browser.post("/api/runs", json={"name": "sneaky"}, headers={"X-Phaseboard": "1"})
        assert write.status_code == 401
        # off-site "next" targets are not followed
        away = browser.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
        assert away.headers["location"] == "/"
        # a cross-site login post is refused by the cross-site guard
        evil = browser.post(
            "/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 403
    other = Settings(**{**private_settings.model_dump(), "api_token": "rotated"})
    with _anonymous(other) as browser:
        browser.cookies.set(READ_COOKIE, cookie.split(";")[0].split("=", 1)[1])
        assert browser.get("/api/runs").status_code == 401  # a new token ends old sign-ins


def _share(settings: Settings, view: str) -> str:
    with TestClient(create_app(settings)) as admin:
        resp = admin.post("/api/shares", json={"view": view}, headers=BEARER)
        assert resp.status_code == 201, resp.text
        return resp.json()["slug"]


def test_a_run_share_reads_its_view_and_nothing_else(
    private_settings: Settings, seeded: dict[str, Any]
) -> None:
    a, b, c = (seeded["ids"][n] for n in "abc")
    slug = _share(private_settings, f"/runs/{a}?x=log")
    with _anonymous(private_settings) as reader:
        page = reader.get(f"/s/{slug}")
        assert page.status_code == 200 and "Shared view" in page.text
        for path in (
            f"/api/runs/{a}/plotdata",
            f"/api/runs/{a}/lenses",
            f"/api/runs/{a}/calibration",
            f"/api/results/{seeded['results']['a']}",
            f"/runs/{a}/jobs",
            f"/runs/{a}/checkpoints?page=0",
            f"/api/jobs?limit=1&run_id={a}",
        ):
            assert reader.get(path).status_code == 200, path
        for path in (
            f"/api/runs/{b}/plotdata",
            f"/api/runs/{c}/lenses",
            f"/api/results/{seeded['results']['c']}",
            f"/api/runs/{a}",  # the run's JSON (configs) is not part of the page's reads
            f"/api/runs/{a}/checkpoints",
            f"/api/checkpoints/{seeded['ckpt']}/download",
            "/api/runs",
            "/api/jobs",
            f"/api/jobs?run_id={a}&run_id={b}",
            f"/api/jobs?run_id={b}",
            f"/api/groups/bands?runs={a},{b}",
        ):
            resp = reader.get(path)
            assert resp.status_code == 401, path
        for path in ("/", f"/runs/{a}", f"/runs/{b}"):
            assert reader.get(path).status_code == 303, path
        assert reader.get("/s/nosuchslug").status_code == 404
        assert (
            reader.post(f"/api/runs/{a}/analyses", json={"kinds": ["metrics"]}).status_code == 401
        )


def test_a_compare_share_reads_its_runs_by_ids_and_tag(
    private_settings: Settings, seeded: dict[str, Any]
) -> None:
    a, b, c = (seeded["ids"][n] for n in "abc")
    slug = _share(private_settings, "/compare?tag=pair")
    with _anonymous(private_settings) as reader:
        assert reader.get(f"/s/{slug}").status_code == 200
        for path in (
            f"/api/groups/bands?runs={a},{b}&band=std",
            f"/api/groups/paths?runs={b},{a}",
            f"/api/learning_order/agreement?runs={a},{b}",
            f"/api/runs/{b}/plotdata?max_points=2000",
        ):
            assert reader.get(path).status_code == 200, path
        for path in (
            f"/api/groups/bands?runs={a},{c}",
            f"/api/groups/bands?runs={a},{b}&runs={c}",
            f"/api/groups/paths?runs={a},x",
            f"/api/runs/{c}/plotdata",
        ):
            assert reader.get(path).status_code == 401, path


def test_without_private_mode_reads_stay_open(make_settings) -> None:
    with TestClient(create_app(make_settings(api_token=TOKEN))) as client:
        assert client.get("/api/runs").status_code == 200
        assert client.get("/login", follow_redirects=False).status_code == 303


def test_private_mode_without_a_token_does_not_start() -> None:
    with pytest.raises(ValueError, match="PHASEBOARD_PRIVATE=true needs PHASEBOARD_API_TOKEN"):
        Settings(private=True)
