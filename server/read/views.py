"""Which page a shared view points at: only local page paths are accepted.

A view is ``<path>?<query>`` of one of our pages (``/``, ``/runs/{id}``, ``/compare``). Anything
else — an absolute or protocol-relative URL, a backslash, control characters, another path —
is refused, so a share link can never send a reader somewhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from phaseboard.server.errors import BadInput
from phaseboard.server.schemas import MAX_ID

MAX_VIEW_CHARS = 4000
_RUN_PATH = re.compile(r"^/runs/([0-9]{1,10})$")


@dataclass(frozen=True)
class PageView:
    page: str  # "runs" | "run" | "compare"
    run_id: int | None
    path: str
    query: str

    @property
    def view(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))


def parse_view(view: str) -> PageView:
    """Validate ``view`` and say which page it shows; raises ``BadInput`` otherwise."""
    if not isinstance(view, str) or not view:
        raise BadInput("view must be a page path such as '/runs/1?x=log'")
    if len(view) > MAX_VIEW_CHARS:
        raise BadInput(f"view is longer than {MAX_VIEW_CHARS} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in view) or "\\" in view:
        raise BadInput("view contains control characters or backslashes")
    if not view.startswith("/") or view.startswith("//"):
        raise BadInput("view must be a local page path starting with '/', not a URL")
    parts = urlsplit(view)
    if parts.scheme or parts.netloc:
        raise BadInput("view must be a local page path, not an absolute URL")
    path, query = parts.path, parts.query
    if any("\x00" in k + v for k, v in parse_qsl(query, keep_blank_values=True)):
        raise BadInput("view's query contains a NUL character (%00)")
    if path == "/":
        return PageView("runs", None, path, query)
    if path == "/compare":
        return PageView("compare", None, path, query)
    match = _RUN_PATH.match(path)
    if match and int(match.group(1)) <= MAX_ID:
        return PageView("run", int(match.group(1)), path, query)
    raise BadInput(f"view must be one of the pages '/', '/runs/<id>', '/compare'; got {path!r}")
