"""Static assets that need more than ``StaticFiles``: plotly.js compressed, and a favicon.

plotly.min.js (about 4.8 MB) comes from the plotly package; it is gzipped once per process
(about 1.4 MB) and served as such to every browser that accepts gzip, with an ETag and a
day of caching. GET and HEAD both answer; ``/favicon.ico`` serves the SVG icon.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse

PLOTLY_JS = resources.files("plotly") / "package_data" / "plotly.min.js"
FAVICON = Path(__file__).resolve().parent.parent.parent / "frontend" / "static" / "favicon.svg"
CACHE = "public, max-age=86400"


@functools.lru_cache(maxsize=1)
def _plotly() -> tuple[bytes, bytes, str]:
    """(raw, gzipped, etag) of plotly.min.js, read and compressed once."""
    raw = PLOTLY_JS.read_bytes()
    return raw, gzip.compress(raw, compresslevel=6, mtime=0), hashlib.sha256(raw).hexdigest()[:16]


def plotly_js(request: Request) -> Response:
    raw, packed, etag = _plotly()
    headers = {"Cache-Control": CACHE, "ETag": f'"{etag}"', "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    body = raw
    if "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = packed, "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(media_type="text/javascript", headers=headers)
    return Response(body, media_type="text/javascript", headers=headers)


def favicon() -> FileResponse:
    return FileResponse(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": CACHE})


def mount_assets(app: FastAPI) -> None:
    """Routes that must come before the ``/static`` mount."""
    app.add_api_route(
        "/static/vendor/plotly.min.js",
        plotly_js,
        methods=["GET", "HEAD"],
        include_in_schema=False,
    )
    app.add_api_route("/favicon.ico", favicon, methods=["GET", "HEAD"], include_in_schema=False)
