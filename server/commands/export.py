"""``phaseboard export``: a run's metric series and analysis results as CSV or JSON.

JSON keeps the server's shapes: ``{"run", "checkpoints", "series": {name: [{step, value}]},
"results": [...]}``. CSV is one long table, one scalar per row:
``section,name,restriction,step,value,wall_time`` (``section`` is ``metric`` or a result kind
such as ``llc``; nested result values are flattened to ``key.subkey``; lists such as
per-chain traces are left to the JSON export). ``wall_time`` (Unix seconds) is when a metric
point was logged; results leave it empty. Metric points in JSON are ``{step, value, wall_time}``.

Lenses whose results keep arrays in the blob store (``LENS_DATA``: influence,
susceptibilities) are exported whole too: JSON under ``"lens_data": {lens: ...}`` as their
``/api/runs/{id}/{lens}/data`` answers; CSV as rows ``influence,test I / train J,,step,value``
and ``susceptibilities,GROUP × SET,,step,value`` (standard errors under ``se:NAME``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from phaseboard import Phaseboard, PhaseboardClientError, Run

MAX_POINTS = 200_000  # the series endpoint's limit; longer series come back downsampled
LENS_DATA = ("influence", "susceptibilities")  # lenses with a /api/runs/{id}/{lens}/data read
CSV_COLUMNS = ["section", "name", "restriction", "step", "value", "wall_time"]


def _items(body: Any, *keys: str) -> list[Any]:
    """A list from a bare list or from the first present key of an envelope."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in keys:
            if isinstance(body.get(key), list):
                return body[key]
    return []


def series_names(run: Run) -> list[str]:
    """Names of the run's metric series, from whatever listing the server offers."""
    data = run.refresh()
    for key in ("metric_names", "series_names", "metrics", "series"):
        value = data.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return sorted(value)
    try:
        body = run.client.request("GET", f"/api/runs/{run.id}/series/names").json()
    except PhaseboardClientError:
        return []
    if isinstance(body, list):  # [{name, points, first_step, last_step}]
        return sorted(n if isinstance(n, str) else n["name"] for n in body)
    if isinstance(body, dict):
        names = body.get("names") or body.get("series")
        if isinstance(names, list):
            return sorted(n if isinstance(n, str) else n.get("name") for n in names)
        if isinstance(names, dict):
            return sorted(names)
    return []


def _points(body: Any) -> list[dict[str, Any]]:
    """``[{step, value}]`` from the series endpoint's answer."""
    if isinstance(body, dict) and isinstance(body.get("steps"), list):
        walls = body.get("wall_times") or [None] * len(body["steps"])
        return [
            {"step": s, "value": v, "wall_time": w}
            for s, v, w in zip(body["steps"], body["values"], walls, strict=True)
        ]
    out = []
    for p in _items(body, "points", "data"):
        if isinstance(p, dict):
            out.append({"step": p["step"], "value": p["value"]})
        else:
            out.append({"step": p[0], "value": p[1]})
    return out


def collect(client: Phaseboard, run_ref: str | int) -> dict[str, Any]:
    """Everything exported for one run (by name or id)."""
    data = client.find_run(run_ref)
    if data is None:
        raise PhaseboardClientError(f"no run named {run_ref!r} on {client.url}", 404, "not_found")
    run = Run(client, data)
    series = {}
    for name in series_names(run):
        series[name] = _points(run.series(name, max_points=MAX_POINTS, wall_time=True))
    results = _items(run.results(), "results", "items")
    lens_data = {}
    for kind in LENS_DATA:
        if any(r.get("kind") == kind for r in results):
            path = f"/api/runs/{run.id}/{kind}/data"
            lens_data[kind] = run.client.request("GET", path).json()
    return {
        "run": run.refresh(),
        "checkpoints": run.checkpoints(),
        "series": series,
        "results": results,
        "lens_data": lens_data,
    }


def _lens_rows(kind: str, data: dict[str, Any]) -> Iterator[tuple[str, int, float | None]]:
    """``(name, step, value)`` of a lens's exported arrays (see the module docstring)."""
    steps = data["steps"]
    if kind == "influence":
        n_test, n_train = len(data["probe_texts"]), len(data["train_texts"])
        for key, prefix in (("influence", ""), ("se", "se:")):
            for k, step in enumerate(steps):
                for i in range(n_test):
                    for j in range(n_train):
                        yield f"{prefix}test {i} / train {j}", step, data[key][k][i][j]
    elif kind == "susceptibilities":
        for key, prefix in (("matrix", ""), ("se", "se:")):
            for k, step in enumerate(steps):
                for g, group in enumerate(data["groups"]):
                    for p, name in enumerate(data["sets"]):
                        yield f"{prefix}{group} × {name}", step, data[key][k][g][p]


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, bool | int | float):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)


def to_csv(export: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name, points in export["series"].items():
        for p in points:
            wall = p.get("wall_time")
            writer.writerow(
                ["metric", name, "", p["step"], p["value"], "" if wall is None else wall]
            )
    for r in export["results"]:
        for key, value in _flatten("", r.get("values", {})):
            writer.writerow(
                [r.get("kind", ""), key, r.get("restriction", ""), r.get("step"), value, ""]
            )
    for kind, data in export.get("lens_data", {}).items():
        for name, step, value in _lens_rows(kind, data):
            writer.writerow([kind, name, "", step, "" if value is None else value, ""])
    return buf.getvalue()


def to_json(export: dict[str, Any]) -> str:
    return json.dumps(export, indent=2, default=str) + "\n"


def export_run(client: Phaseboard, run_ref: str | int, fmt: str) -> str:
    """The run as ``csv`` or ``json`` text."""
    if fmt not in ("csv", "json"):
        raise PhaseboardClientError(f"unknown format {fmt!r}; use csv or json")
    export = collect(client, run_ref)
    return to_csv(export) if fmt == "csv" else to_json(export)
