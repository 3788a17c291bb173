"""Pydantic request/response models of the jobs API (``server.api.jobs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from phaseboard.server.analysis_config import LLCParams
from phaseboard.server.schemas import DbId, Text, UtcDatetime


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    checkpoint_id: int | None
    kind: str
    restriction: str
    config: dict[str, Any]
    config_hash: str
    device: str
    state: str = Field(
        description="queued | running | waiting (for more checkpoints) | done | failed | "
        "cancelled | not_applicable (the lens does not apply to the run's task)"
    )
    attempts: int
    worker_id: str | None
    heartbeat_at: UtcDatetime | None
    progress: float
    progress_msg: str
    error: str | None = Field(description="Why it failed: the message, without traceback.")
    traceback: str | None = Field(
        default=None,
        description="The failure's Python traceback; only to a caller presenting the API "
        "token (never when the server has none; it is in the server's log).",
    )
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None

    @computed_field(description="The lens that made it (``kind``: the same, its older name).")
    @property
    def lens(self) -> str:
        return self.kind


class JobList(BaseModel):
    jobs: list[JobOut]
    total: int
    counts: dict[str, int] = Field(description="Jobs per state under the same filters.")


class CalibrationGrid(BaseModel):
    """The settings ``calibrate`` tries (each list: the values of one axis of the grid)."""

    model_config = ConfigDict(extra="forbid")

    lrs: list[float] | None = Field(default=None, min_length=1, max_length=12)
    localizations: list[float] | None = Field(default=None, min_length=1, max_length=12)
    n_betas: list[float] | None = Field(default=None, min_length=1, max_length=6)

    def checked(self) -> dict[str, Any]:
        from phaseboard.server.errors import BadInput

        for name in ("lrs", "n_betas"):
            if any(not (x > 0 and x < float("inf")) for x in getattr(self, name) or []):
                raise BadInput(f"calibrate.{name}: every value must be a finite number > 0")
        if any(not (0 <= x < float("inf")) for x in self.localizations or []):
            raise BadInput("calibrate.localizations: every value must be finite and >= 0")
        return self.model_dump(exclude_none=True)


class AnalysesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lenses: list[Text] | None = Field(
        default=None,
        description="Lenses to queue (GET /api/lenses lists them); default: the run's "
        "automatic lenses.",
    )
    kinds: list[Text] | None = Field(
        default=None, description="The same as lenses (the older name); give one of the two."
    )
    checkpoint_ids: list[DbId] | None = Field(
        default=None, description="Checkpoints to analyse; default: all of the run's."
    )
    llc: LLCParams | None = Field(  # type: ignore[valid-type]
        default=None, description="LLC hyperparameters over the run's and the defaults."
    )
    restrictions: list[Text] | None = Field(
        default=None, description="llc_restricted only: e.g. ['weights:attn', 'data:train_a']."
    )
    device: Text | None = Field(default=None, description="'cpu' or 'cuda' to pin; default any.")
    calibrate: CalibrationGrid | None = Field(
        default=None,
        description="calibrate only: the grid; without checkpoint_ids the job picks three "
        "spread over the trajectory, including where the training loss falls fastest.",
    )
    include_duplicates: bool = Field(
        default=False,
        description="Also analyse checkpoints flagged as holding another step's weights "
        "(duplicate_of_step); skipped by default.",
    )


class AnalysesResponse(BaseModel):
    run_id: int
    job_ids: list[int]
    queued: int = Field(description="How many of job_ids are queued or running.")
    waiting: dict[str, str] = Field(
        default_factory=dict,
        description="Lenses that wait for more checkpoints, and for what (e.g. 'waiting for "
        "a 2nd checkpoint'); they run when the checkpoints arrive.",
    )
    not_applicable: dict[str, str] = Field(
        default_factory=dict,
        description="Lenses found not to apply to this run's task, and why.",
    )


class LLCValue(BaseModel):
    mean: float | None
    std: float | None
    per_chain: list[float] = []
    diverged: bool | None = None
    job_id: int | None = None
    verdict: str | None = Field(
        default=None, description="ok, diverged chains, ... (docs/trusting-the-llc.md)"
    )
    n_beta: float | None = None


class LLCPoint(BaseModel):
    checkpoint_id: int | None
    step: int | None
    mean: float | None
    std: float | None
    per_chain: list[float] = []
    diverged: bool | None = None
    verdict: str | None = None
    n_beta: float | None = None
    restrictions: dict[str, LLCValue] = Field(
        default_factory=dict, description="weights:<group> / data:<subset> -> estimate."
    )


class LLCSeries(BaseModel):
    run_id: int
    points: list[LLCPoint]


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int | None
    run_id: int
    checkpoint_id: int | None
    step: int | None
    kind: str
    restriction: str
    values: dict[str, Any]
    created_at: UtcDatetime

    @computed_field(description="The lens that made it (``kind``: the same, its older name).")
    @property
    def lens(self) -> str:
        return self.kind


class ResultList(BaseModel):
    run_id: int
    results: list[ResultOut]
