"""Pydantic request/response models of the JSON API.

Validation errors become 422 responses (mapped in ``server.app``) whose message names the
field and the problem, e.g. ``task: unknown task 'mlp'; known tasks: dln, tms``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, NotRequired

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from phaseboard.server.json_values import json_problem
from phaseboard.server.series import MAX_STEP

# ------------------------------------------------------------------ shared input types
# Every integer and string that reaches SQL goes through one of these, so a bad value is a
# 422 naming the field on SQLite and PostgreSQL alike (never an OverflowError / a bigint or
# NUL error from the driver, i.e. a 500).

MAX_INT64 = 2**63 - 1
NO_NUL = r"^[^\x00]*$"
"""Pattern of every stored or searched string: PostgreSQL text cannot hold NUL (U+0000)."""


def _ascii_digits(value: object) -> object:
    """Integers written as text (path, query, form) must be plain ASCII digits.

    Python's ``int()`` (and pydantic's lax mode) also read ``1_000``, ``+5``, `` 5`` and
    non-ASCII digits such as ``٥``; none of those is how anyone writes a step or an id.
    """
    if isinstance(value, str):
        digits = value.removeprefix("-")  # a sign is read, so the range check can name it
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(f"{value[:40]!r} is not an integer (ASCII digits 0-9)")
    return value


DbInt = Annotated[int, BeforeValidator(_ascii_digits), Field(ge=0, le=MAX_INT64)]
"""A non-negative integer that fits a SQL BIGINT: offsets, limits, page numbers."""
MAX_ID = 2**31 - 1
DbId = Annotated[int, BeforeValidator(_ascii_digits), Field(ge=0, le=MAX_ID)]
"""A row id: the primary keys are SQL INTEGER (32-bit on PostgreSQL)."""
StepInt = Annotated[int, BeforeValidator(_ascii_digits), Field(ge=0, le=MAX_STEP)]
"""A training step: non-negative, exact as a double (``server.series.MAX_STEP``)."""
Text = Annotated[str, Field(pattern=NO_NUL)]
"""Any string that is stored or searched: no NUL characters."""


def _check_json(value: Any) -> Any:
    problem = json_problem(value)
    if problem is not None:
        raise PydanticCustomError("json_value", "{problem}", {"problem": problem})
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
"""A free-form JSON object that both SQLite and PostgreSQL store and read back unchanged."""


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A timestamp in responses, always with its offset (RFC 3339 ``date-time``): SQLite hands
back naive UTC values, PostgreSQL aware ones."""


def known_tasks() -> list[str] | None:
    """Task names this server knows, or None when the task registry is not importable."""
    try:
        from phaseboard.analysis.tasks import list_tasks
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


Name = Annotated[Text, Field(min_length=1, max_length=200), AfterValidator(_check_name)]
TaskName = Annotated[Text | None, AfterValidator(_check_task)]
Tag = Annotated[Text, Field(min_length=1, max_length=100)]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    task: TaskName = Field(default=None, description="A task name from the registry.")
    task_config: JsonObject = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    notes: Text = Field(default="", max_length=100_000)
    analysis_config: JsonObject = Field(
        default_factory=dict,
        description='Analyses for new checkpoints, e.g. {"analyses": ["metrics", "llc"]}.',
    )
    config: JsonObject = Field(
        default_factory=dict,
        description="Hyperparameters (free-form JSON), kept apart from task_config.",
    )
    status: Literal["created", "running", "imported"] = Field(
        default="created", description="running: a client heartbeats; imported: ingested."
    )


class RunFinish(BaseModel):
    """How a run ended: ``finished`` (normal exit), ``crashed`` (the script raised) or
    ``imported`` (an import of its checkpoints is complete)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["finished", "crashed", "imported"] = "finished"


class RunUpdate(BaseModel):
    """A partial update: only the fields present are changed; ``null`` clears a field."""

    model_config = ConfigDict(extra="forbid")
    CLEARED: ClassVar[dict[str, Callable[[], object]]] = {
        "notes": str,
        "tags": list,
        "task_config": dict,
        "analysis_config": dict,
        "config": dict,
    }
    """What ``null`` sets each clearable field to (``task: null`` means no task)."""

    name: Name | SkipJsonSchema[None] = None
    task: TaskName = None
    task_config: JsonObject | None = None
    tags: list[Tag] | None = Field(default=None, max_length=50)
    notes: Text | None = Field(default=None, max_length=100_000)
    analysis_config: JsonObject | None = None
    config: JsonObject | None = Field(
        default=None, description="Replaces the run's hyperparameters."
    )


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    task: str | None
    task_config: dict[str, Any]
    tags: list[str]
    notes: str
    analysis_config: dict[str, Any]
    config: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, Any] = Field(
        default_factory=dict, description="{series: {last, last_step, min, max}}."
    )
    status: str = Field(
        default="created",
        description="created | running | finished | crashed | imported "
        "(running with a stale heartbeat reads as crashed).",
    )
    heartbeat_at: UtcDatetime | None = None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    checkpoint_count: int = 0
    jobs: dict[str, int] = Field(default_factory=dict, description="Job counts by state.")
    last_activity: UtcDatetime | None = None


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
    key_mapping: dict[str, Any] | None = Field(
        default=None,
        description='How the file maps onto the model: {"nesting": entry the weights came from '
        '(e.g. "state_dict", "ema") or null, "strip_prefix": removed from every name (e.g. '
        '"module."), "dropped": other entries not kept (optimizer state, ...)}.',
    )
    mapping: str = Field(default="", description="The key mapping in words; empty if none.")
    duplicate_of_step: int | None = Field(
        default=None,
        description="Another step of this run with the same weights (the highest such step), "
        "or null. A series whose branches serve one model twice is mislabelled; analyses "
        "skip these checkpoints unless asked.",
    )
    created_at: UtcDatetime
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


class TokenizerOut(BaseModel):
    """A run's stored ``tokenizer.json`` (the views decode token ids with it)."""

    model_config = ConfigDict(from_attributes=True)

    run_id: int
    sha256: str
    size: int
    vocab_size: int
    created_at: datetime


class MetricIn(TypedDict):
    """One point of a metric series. A TypedDict: 10^5 of them validate in ~0.1 s."""

    step: Annotated[int, Field(strict=True, ge=0, le=MAX_STEP)]  # JSON integers only: fast
    name: Annotated[Text, Field(min_length=1, max_length=200)]
    value: Annotated[float, Field(allow_inf_nan=False, description="A finite number.")]
    wall_time: NotRequired[
        Annotated[
            float,
            Field(ge=0, le=1e11, allow_inf_nan=False, description="Unix seconds; default now."),
        ]
    ]


class MetricsAccepted(BaseModel):
    accepted: int
    names: list[str]


class SeriesOut(BaseModel):
    name: str
    steps: list[int]
    values: list[float]
    total_points: int
    downsampled: bool
    wall_times: list[float | None] | None = Field(
        default=None, description="With ?wall_time=true: Unix seconds of each point."
    )


class SeriesName(BaseModel):
    name: str
    points: int
    first_step: int
    last_step: int
