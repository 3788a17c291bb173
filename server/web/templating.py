"""The Jinja environment: template folder, filters and globals shared by every page."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi.templating import Jinja2Templates

from phaseboard.server.lenses._registry import page_views
from phaseboard.server.settings import REPO_ROOT

TEMPLATE_DIR = REPO_ROOT / "frontend" / "templates"
STATIC_DIR = REPO_ROOT / "frontend" / "static"


def human_size(n: int | None) -> str:
    if n is None:
        return "–"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def ago(when: datetime | None) -> str:
    """``3 min ago``-style relative time (UTC)."""
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


def iso(when: datetime | None) -> str:
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat(timespec="seconds")


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


def cell(value: Any) -> str:
    """A config or summary value in a table cell: numbers short, structures as JSON."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return num(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)[:80]
    return str(value)[:80]


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
    env = templates.env
    env.filters.update(human_size=human_size, ago=ago, iso=iso, num=num, cell=cell)
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    env.globals["lens_views"] = page_views  # the run page's lens section (server.lenses)
    return templates
