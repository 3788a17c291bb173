"""Warnings for the compare page: runs whose LLCs or tasks are not comparable.

LLC values are only comparable under one SGLD configuration, and curves only under one task
configuration. This reads the runs' task configs and the configs their LLC jobs ran with,
and names the keys that differ.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.models import Job


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def _describe(runs: list[dict[str, Any]], configs: list[dict[str, Any]], keys: list[str]) -> str:
    parts = []
    for run, cfg in zip(runs, configs, strict=True):
        values = ", ".join(f"{k}={json.dumps(cfg.get(k))}" for k in keys)
        parts.append(f"{run['name']}: {values}")
    return "; ".join(parts)


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
