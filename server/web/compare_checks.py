"""Warnings for the compare page: runs whose LLCs or tasks are not comparable.

LLC values are only comparable under one SGLD configuration, and curves only under one task
configuration. This reads the runs' task configs and the configs their LLC jobs ran with,
and names the keys that differ: nested configs (a whole ``config.json`` under ``hf_config``)
are compared leaf by leaf, so the warning names ``hf_config.n_layer`` and its two values, not
two copies of the config; at most ``MAX_KEYS`` keys, each value at most ``MAX_VALUE``
characters.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.models import Job

MAX_KEYS = 8  # differing keys named per warning (the rest counted)
MAX_VALUE = 40  # characters of one value shown


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    if not isinstance(config, dict) or (prefix and not config):
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return out


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Leaf keys (dotted) whose values differ between the configs."""
    flat = [_flatten(c) for c in configs]
    keys = sorted({k for c in flat for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in flat}) > 1]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _describe(runs: list[dict[str, Any]], configs: list[dict[str, Any]], keys: list[str]) -> str:
    """``run: key=value, ...; run: ...`` over the first ``MAX_KEYS`` keys."""
    shown, more = keys[:MAX_KEYS], len(keys) - MAX_KEYS
    parts = []
    for run, cfg in zip(runs, configs, strict=True):
        flat = _flatten(cfg)
        values = ", ".join(f"{k}={_short(flat.get(k))}" for k in shown)
        parts.append(f"{run['name']}: {values}")
    tail = f"; and {more} more key(s)" if more > 0 else ""
    return "; ".join(parts) + tail


def config_warnings(session: Session, runs: list[dict[str, Any]]) -> list[str]:
    """One sentence per way the compared runs differ (empty when comparable)."""
    if len(runs) < 2:
        return []
    warnings: list[str] = []
    tasks = {r["task"] for r in runs}
    if len(tasks) > 1:
        warnings.append("Different tasks: " + "; ".join(f"{r['name']}: {r['task']}" for r in runs))
    else:
        task_cfgs = [dict(r["task_config"] or {}) for r in runs]
        keys = _differing_keys(task_cfgs)
        if keys:
            warnings.append("Different task configs (" + _describe(runs, task_cfgs, keys) + ")")
    llc_cfgs: list[dict[str, Any]] = []
    with_llc: list[dict[str, Any]] = []
    for run in runs:
        cfgs = session.scalars(
            select(Job.config)
            .where(Job.run_id == run["id"], Job.kind == "llc", Job.state == "done")
            .order_by(Job.id.desc())
            .limit(1)
        ).all()
        if cfgs:
            llc_cfgs.append(dict(cfgs[0] or {}))
            with_llc.append(run)
    keys = _differing_keys(llc_cfgs) if len(llc_cfgs) > 1 else []
    if keys:
        warnings.append(
            "Different LLC settings, so their LLC values are not comparable ("
            + _describe(with_llc, llc_cfgs, keys)
            + ")"
        )
    return warnings
