"""Pydantic request/response models of the JSON API.

Validation errors become 422 responses (mapped in ``server.app``) whose message names the
field and the problem, e.g. ``task: unknown task 'mlp'; known tasks: dln, tms``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from server.series import MAX_STEP


def known_tasks() -> list[str] | None:
    """Task names this server knows, or None when the task registry is not importable."""
    try:
        from analysis.tasks import list_tasks
    except ImportError:
        return None
    return list_tasks()


def _check_task(task: str | None) -> str | None:
    if task is None:
        return None
    task = task.strip()
    if not task:
        return None
    known = known_tasks()
    if known is not None and task not in known:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(known) or '(none)'}")
    return task


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("name must not be empty")
    return name


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_name)]
TaskName = Annotated[str | None, AfterValidator(_check_task)]
Tag = Annotated[str, Field(min_length=1, max_length=100)]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    task: TaskName = Field(default=None, description="A task name from the registry.")
    task_config: dict[str, Any] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    notes: str = Field(default="", max_length=100_000)
    analysis_config: dict[str, Any] = Field(
        default_factory=dict,
        description='Analyses for new checkpoints, e.g. {"analyses": ["metrics", "llc"]}.',
    )


class RunUpdate(BaseModel):
    """A partial update: only the fields present are changed."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    task: TaskName = None
    task_config: dict[str, Any] | None = None
    tags: list[Tag] | None = Field(default=None, max_length=50)
    notes: str | None = Field(default=None, max_length=100_000)
    analysis_config: dict[str, Any] | None = None


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    task: str | None
    task_config: dict[str, Any]
    tags: list[str]
    notes: str
    analysis_config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    checkpoint_count: int = 0
    jobs: dict[str, int] = Field(default_factory=dict, description="Job counts by state.")
    last_activity: datetime | None = None


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    step: int
    sha256: str
    size: int
    format: str
    n_params: int
    n_tensors: int
    status: str = Field(description='"ok", or "flagged" with the reason in ``error``.')
    error: str | None
    created_at: datetime
    download_url: str = ""
    job_ids: list[int] = Field(default_factory=list, description="Analyses queued on upload.")


class DatasetOut(BaseModel):
    """A run's token dataset (``train``, ``test`` or a data subset) as stored."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    name: str
    sha256: str
    size: int
    format: str
    n_tokens: int
    shape: list[int]
    dtype: str
    max_token: int
    created_at: datetime


class MetricIn(TypedDict):
    """One point of a metric series. A TypedDict: 10^5 of them validate in ~0.1 s."""

    step: Annotated[int, Field(ge=0, le=MAX_STEP)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    value: Annotated[float, Field(allow_inf_nan=False, description="A finite number.")]


class MetricsAccepted(BaseModel):
    accepted: int
    names: list[str]


class SeriesOut(BaseModel):
    name: str
    steps: list[int]
    values: list[float]
    total_points: int
    downsampled: bool


class SeriesName(BaseModel):
    name: str
    points: int
    first_step: int
    last_step: int
