"""The one write the pages make themselves: the run header form (task, config, tags, notes)."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from server.errors import BadInput
from server.models import Run, utcnow
from server.web.queries import get_run


def parse_tags(text: str) -> list[str]:
    """``"a, b,,a"`` -> ``["a", "b"]`` (order kept, duplicates and blanks dropped)."""
    seen: list[str] = []
    for part in text.split(","):
        tag = part.strip()
        if tag and tag not in seen:
            seen.append(tag[:100])
    return seen


def update_run_header(
    session: Session, run_id: int, *, task: str, task_config: str, tags: str, notes: str
) -> Run:
    """Apply the header form to a run; a config that is not a JSON object is refused."""
    run = get_run(session, run_id)
    try:
        config = json.loads(task_config) if task_config.strip() else {}
    except json.JSONDecodeError as exc:
        raise BadInput(f"task config is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(config, dict):
        raise BadInput('task config must be a JSON object, e.g. {"p": 53}')
    if len(task) > 100:
        raise BadInput("task name is longer than 100 characters")
    run.task = task.strip() or None
    run.task_config = config
    run.tags = parse_tags(tags)
    run.notes = notes
    run.updated_at = utcnow()
    session.flush()
    return run
