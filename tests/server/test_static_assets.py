"""plotly.js compressed and cached, a favicon, HEAD on static files."""

from __future__ import annotations

import gzip

from fastapi.testclient import TestClient


def test_plotly_is_served_gzipped_with_cache_headers_and_an_etag(client: TestClient) -> None:
    resp = client.get("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert resp.status_code == 200
    assert resp.headers["content-encoding"] == "gzip"
    assert "max-age" in resp.headers["cache-control"]
    wire = int(resp.headers["content-length"])
    assert wire < 0.4 * len(resp.content)  # httpx decoded it: the wire is under 40 % of it
    assert resp.content.startswith(b"/**") or b"plotly" in resp.content[:2000]
    again = client.get(
        "/static/vendor/plotly.min.js", headers={"If-None-Match": resp.headers["etag"]}
    )
    assert again.status_code == 304


def test_plotly_without_gzip_is_plain_and_head_answers_without_a_body(client: TestClient) -> None:
    plain = client.get("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    head = client.head("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(gzip.compress(plain.content, 6, mtime=0))


def test_static_files_answer_head_and_a_favicon_exists(client: TestClient) -> None:
    for path in ("/static/app.js", "/static/app.css", "/favicon.ico"):
        resp = client.head(path)
        assert resp.status_code == 200, path
        assert resp.content == b""
    icon = client.get("/favicon.ico")
    assert icon.headers["content-type"].startswith("image/svg+xml") and b"<svg" in icon.content
    assert 'rel="icon"' in client.get("/").text
