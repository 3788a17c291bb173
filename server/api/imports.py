"""Background imports into a run: "import from the Hub" on the run page's upload card.

``POST /api/runs/{id}/imports`` starts one (``server.imports``) and answers 202 at once;
``GET /api/imports/{id}`` reports its progress; ``GET /api/runs/{id}/imports`` lists a run's.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from phaseboard.server.deps import RunDep, SessionDep, WriteAuth
from phaseboard.server.errors import BadInput
from phaseboard.server.imports import Imports
from phaseboard.server.schemas import DbId

router = APIRouter(tags=["imports"])

_REPO = re.compile(r"^(hf://)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        description="A Hub model repo: 'ORG/NAME' or 'hf://ORG/NAME' (one branch per step).",
        max_length=200,
    )
    revisions: str | None = Field(
        default="step*",
        max_length=500,
        description="Branches to import: globs or names, comma separated; null for all.",
    )
    every: int | None = Field(default=None, ge=1, le=100_000, description="Every K-th revision.")
    max: int | None = Field(
        default=None, ge=2, le=100_000, description="At most N revisions, log-spaced over steps."
    )

    @field_validator("source")
    @classmethod
    def _repo(cls, value: str) -> str:
        value = value.strip()
        if not _REPO.match(value):
            raise ValueError("expected ORG/NAME, a model repo on the Hugging Face Hub")
        return value if value.startswith("hf://") else f"hf://{value}"


class ImportOut(BaseModel):
    id: int
    run_id: int
    source: str
    revisions: str | None
    state: str = Field(description="running | done | failed")
    done: int = Field(description="Revisions handled so far.")
    total: int = Field(description="Revisions to handle (known once the branches are listed).")
    message: str
    imported: list[int] = Field(description="Steps stored by this import.")
    duplicates: list[dict[str, int]] = Field(
        description="Steps whose weights equal a later step's: [{step, of}]."
    )
    failed: list[str]
    started_at: float
    finished_at: float | None
    status_url: str = ""


def _imports(request: Request) -> Imports:
    state = request.app.state
    if getattr(state, "imports", None) is None:
        state.imports = Imports()
    return state.imports  # type: ignore[no-any-return]


def _out(task: Any) -> ImportOut:
    return ImportOut(**task.out(), status_url=f"/api/imports/{task.id}")


def _server_url(request: Request) -> str:
    """This server on loopback, where the import thread uploads (the socket it listens on)."""
    host, port = request.scope.get("server") or (None, None)
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        address = None
    if address is None or port is None:  # an in-process test client has no socket
        raise BadInput("imports need a server listening on a socket (phaseboard up)")
    if address.is_unspecified:
        address = ipaddress.ip_address("127.0.0.1")
    return f"http://[{address}]:{port}" if address.version == 6 else f"http://{address}:{port}"


@router.post(
    "/runs/{run_id}/imports", status_code=202, response_model=ImportOut, dependencies=[WriteAuth]
)
def start_import(
    run: RunDep, body: ImportRequest, session: SessionDep, request: Request
) -> ImportOut:
    """Import a Hub series into this run in the background (see ``phaseboard ingest hf://``).

    The server downloads each revision (its own Hub cache and ``HF_TOKEN``) and stores it as
    an upload; steps the run has are skipped. 409 while another import of the run runs.
    """
    task = _imports(request).start(
        run_id=run.id,
        run_name=run.name,
        source=body.source,
        revisions=body.revisions,
        every=body.every,
        max_n=body.max,
        server_url=_server_url(request),
        token=request.app.state.settings.api_token,
    )
    return _out(task)


@router.get("/imports/{import_id}", response_model=ImportOut)
def get_import(import_id: DbId, request: Request) -> ImportOut:
    """How far a background import got."""
    return _out(_imports(request).get(import_id))


@router.get("/runs/{run_id}/imports", response_model=list[ImportOut])
def list_imports(run: RunDep, session: SessionDep, request: Request) -> list[ImportOut]:
    """The run's background imports since the server started, newest first."""
    return [_out(t) for t in sorted(_imports(request).for_run(run.id), key=lambda t: -t.id)]
