"""In a real Chromium: another site's page cannot write into the dashboard; ours still can.

The attack: a page on another origin posts a checkpoint with
``fetch(url, {method: "POST", body: FormData, mode: "no-cors"})``. Chromium sends it with
``Origin`` and ``Sec-Fetch-Site: cross-site``; the server refuses it and stores nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.browser.conftest import LiveSite

pytestmark = pytest.mark.browser
ATTACK = """async ([url, runId]) => {
  const form = new FormData();
  form.append("step", "777");
  form.append("file", new Blob([new Uint8Array(64)]), "w.safetensors");
  await fetch(url + "/api/runs/" + runId + "/checkpoints",
              {method: "POST", body: form, mode: "no-cors"});
  await fetch(url + "/api/runs", {method: "POST", mode: "no-cors",
              headers: {"Content-Type": "text/plain"}, body: '{"name": "pwned"}'});
  return true;
}"""


@pytest.fixture(scope="module")
def open_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    """A seeded server with no token: the laptop default that the attack targets."""
    from tests.browser.conftest import _site

    yield from _site(tmp_path_factory)


class _CatsPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"<!doctype html><p>cats</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_site() -> Iterator[str]:
    """Another site: ``localhost`` is not the dashboard's ``127.0.0.1`` (cross-site), and
    both are loopback, so Chromium's private-network rules let the page reach the server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CatsPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _store(site: LiveSite) -> tuple[list, list]:
    runs = httpx.get(site.url + "/api/runs").json()
    rid = runs[0]["id"]
    ckpts = httpx.get(f"{site.url}/api/runs/{rid}/checkpoints").json()
    return sorted(r["name"] for r in runs), sorted(c["step"] for c in ckpts)


def test_a_cross_site_no_cors_upload_is_refused_and_stores_nothing(
    open_site, other_site, page
) -> None:
    seen: list[int] = []
    page.on("response", lambda r: seen.append(r.status) if open_site.url in r.url else None)
    rid = httpx.get(open_site.url + "/api/runs").json()[0]["id"]
    before = _store(open_site)
    page.goto(other_site + "/")
    assert page.evaluate(ATTACK, [open_site.url, rid]) is True
    page.wait_for_timeout(300)
    assert seen == [403, 403]  # both reached the server and were refused
    assert _store(open_site) == before


def test_our_own_pages_still_write_through_htmx_and_fetch(open_site, page) -> None:
    """The header form (htmx) and a boundary (fetch) on our own origin, with no CSP errors
    (the ``page`` fixture fails the test on any CSP violation in the console)."""
    rid = httpx.get(open_site.url + "/api/runs").json()[0]["id"]
    page.goto(f"{open_site.url}/runs/{rid}")
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
    resp = page.evaluate(
        """async (rid) => {
          const r = await window.Phaseboard.api("POST", "/api/runs/" + rid + "/phases",
                                                {step: 3, label: "from-page"});
          return r;
        }""",
        rid,
    )
    assert resp["label"] == "from-page"
    phases = httpx.get(f"{open_site.url}/api/runs/{rid}/phases").json()
    assert any(p["label"] == "from-page" for p in phases)
