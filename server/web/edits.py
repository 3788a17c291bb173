"""The one write the pages make themselves: the run header form (task, config, tags, notes)."""

from __future__ import annotations

import json

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.orm import Session

from phaseboard.server.errors import BadInput
from phaseboard.server.models import Run, utcnow
from phaseboard.server.read import get_run
from phaseboard.server.schemas import RunUpdate
from phaseboard.server.settings import Settings
from phaseboard.server.task_checks import check_task_config


def parse_tags(text: str) -> list[str]:
    """``"a, b,,a"`` -> ``["a", "b"]`` (order kept, duplicates and blanks dropped)."""
    seen: list[str] = []
    for part in text.split(","):
        tag = part.strip()[:100]
        if tag and tag not in seen:
            seen.append(tag)
    return seen


def update_run_header(
    session: Session,
    run_id: int,
    *,
    settings: Settings,
    task: str,
    task_config: str,
    tags: str,
    notes: str,
) -> Run:
    """Apply the header form to a run; a config that is not a JSON object, or one naming
    code the operator did not install (``server.task_checks``), is refused."""
    run = get_run(session, run_id)
    try:
        config = json.loads(task_config) if task_config.strip() else {}
    except json.JSONDecodeError as exc:
        raise BadInput(f"task config is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(config, dict):
        raise BadInput('task config must be a JSON object, e.g. {"p": 53}')
    try:  # the API's own rules: a known task, tag and notes lengths
        update = RunUpdate(
            task=task.strip() or None, task_config=config, tags=parse_tags(tags), notes=notes
        )
    except ValidationError as exc:
        raise BadInput("; ".join(_field_message(e) for e in exc.errors())) from exc
    check_task_config(settings, update.task, update.task_config or {})
    run.task = update.task
    run.task_config = update.task_config or {}
    run.tags = update.tags or []
    run.notes = notes
    run.updated_at = utcnow()
    session.flush()
    return run


def _field_message(error: ErrorDetails) -> str:
    field = ".".join(str(part) for part in error["loc"])
    return f"{field}: {error['msg'].removeprefix('Value error, ')}"
