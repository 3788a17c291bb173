"""Property-based API test: schemathesis drives every operation of our own OpenAPI spec.

Fails on any 5xx, an undeclared status code, a wrong content type or a body that does not
match the declared schema, for schema-valid (positive) and schema-invalid (negative) data.
Bounded (``MAX_EXAMPLES`` per operation and mode), derandomized (the same examples on every
run) and on a seeded store (a run, a checkpoint, metrics, a boundary, a share), so that the
small ids generated for paths sometimes exist.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from phaseboard.server.app import create_app
from tests.server.conftest import safetensors_bytes

MAX_EXAMPLES = 6
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Not fuzzed: a real checkpoint body is needed for anything past the multipart parser, and
# ``test_checkpoints`` / ``test_hardening`` cover its refusals.
SKIP = {"POST /api/runs/{run_id}/checkpoints"}


def _seed(client: TestClient) -> None:
    rid = client.post("/api/runs", json={"name": "seed", "task": "dln"}).json()["id"]
    client.post(
        f"/api/runs/{rid}/checkpoints",
        files={"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")},
        data={"step": "1"},
    )
    client.post(f"/api/runs/{rid}/metrics", json=[{"step": 1, "name": "loss", "value": 1}])
    client.post(f"/api/runs/{rid}/phases", json={"step": 1, "label": "a"})
    client.post("/api/shares", json={"view": "/"})


def _fuzz(operation, mode: GenerationMode) -> None:  # type: ignore[no-untyped-def]
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:  # type: ignore[no-untyped-def]
        case.call_and_validate(checks=CHECKS)

    check()


@pytest.mark.slow
def test_api_answers_every_generated_request_as_its_spec_says(make_settings) -> None:
    settings_ = make_settings(max_metric_points=1000)
    app = create_app(settings_, start_workers=False)
    with TestClient(app) as client:
        _seed(client)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Schema-invalid (negative) requests are refused by validation before any query runs, so
    # they find nothing new on PostgreSQL: there only schema-valid ones, which do reach it.
    modes = [GenerationMode.POSITIVE]
    if settings_.database_url.startswith("sqlite"):
        modes.append(GenerationMode.NEGATIVE)
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in SKIP:
            continue
        tested += 1
        for mode in modes:
            try:
                _fuzz(operation, mode)
            except Unsatisfiable:  # nothing in the operation can be made invalid
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect them all
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:3000])
    app.state.db.dispose()
    assert tested >= 20
    assert not failures, "\n\n".join(failures)
