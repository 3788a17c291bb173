"""Runs API: create, list with search/filter/sort, read, update, delete; clear 4xx errors."""

from __future__ import annotations

import pytest


def test_create_returns_the_run_with_its_id(client) -> None:
    resp = client.post(
        "/api/runs",
        json={"name": "grok-1", "task": "modular_addition", "task_config": {"p": 53},
              "tags": ["grokking"], "notes": "first try"},
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["id"] > 0 and run["name"] == "grok-1" and run["task"] == "modular_addition"
    assert run["task_config"] == {"p": 53} and run["tags"] == ["grokking"]
    assert run["checkpoint_count"] == 0 and run["jobs"] == {} and run["last_activity"]
    assert client.get(f"/api/runs/{run['id']}").json()["name"] == "grok-1"


def test_duplicate_name_is_409_and_store_unchanged(client, snapshot) -> None:
    assert client.post("/api/runs", json={"name": "dup"}).status_code == 201
    before = snapshot()
    resp = client.post("/api/runs", json={"name": "dup"})
    assert resp.status_code == 409
    assert "dup" in resp.json()["detail"] and "already exists" in resp.json()["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name must not be empty"),
        ({"name": "x" * 201}, "at most 200"),
        ({}, "name"),
        ({"name": "a", "task": "no_such_task"}, "unknown task 'no_such_task'; known tasks: "),
        ({"name": "a", "tags": "notalist"}, "tags"),
        ({"name": "a", "bogus": 1}, "bogus"),
    ],
)
def test_bad_run_input_is_422_naming_the_problem(client, snapshot, body, needle) -> None:
    before = snapshot()
    resp = client.post("/api/runs", json=body)
    assert resp.status_code == 422
    assert needle in resp.json()["detail"]
    assert snapshot() == before


def test_unknown_task_lists_known_tasks(client) -> None:
    detail = client.post("/api/runs", json={"name": "a", "task": "mlp"}).json()["detail"]
    assert "dln" in detail and "modular_addition" in detail


def test_unknown_run_is_404_with_message(client) -> None:
    for method in ("get", "delete"):
        resp = getattr(client, method)("/api/runs/9999")
        assert resp.status_code == 404 and "run 9999 does not exist" in resp.json()["detail"]
    resp = client.patch("/api/runs/9999", json={"notes": "x"})
    assert resp.status_code == 404


def test_list_searches_filters_and_sorts(client) -> None:
    for name, task, tags in [
        ("Alpha-grok", "modular_addition", ["grok", "p53"]),
        ("beta_tms", "tms", ["tms"]),
        ("gamma-grok", "modular_addition", ["grok"]),
    ]:
        assert client.post("/api/runs", json={"name": name, "task": task, "tags": tags}).is_success
    names = lambda **p: [r["name"] for r in client.get("/api/runs", params=p).json()]  # noqa: E731
    assert names(sort="name") == ["Alpha-grok", "beta_tms", "gamma-grok"]
    assert names(sort="-name") == ["gamma-grok", "beta_tms", "Alpha-grok"]
    assert names(q="GROK", sort="name") == ["Alpha-grok", "gamma-grok"]
    assert names(q="_") == ["beta_tms"]  # LIKE wildcards are literal
    assert names(tag="p53") == ["Alpha-grok"]
    assert names(task="tms") == ["beta_tms"]
    assert names(sort="created") == ["Alpha-grok", "beta_tms", "gamma-grok"]
    assert names(sort="name", limit=1, offset=1) == ["beta_tms"]
    resp = client.get("/api/runs", params={"sort": "size"})
    assert resp.status_code == 422 and "-created" in resp.json()["detail"]


def test_patch_changes_only_given_fields(client) -> None:
    rid = client.post("/api/runs", json={"name": "p", "tags": ["a"], "notes": "n"}).json()["id"]
    resp = client.patch(f"/api/runs/{rid}", json={"notes": "new", "task": "dln"})
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert (run["notes"], run["task"], run["tags"], run["name"]) == ("new", "dln", ["a"], "p")
    assert client.patch(f"/api/runs/{rid}", json={"task": "nope"}).status_code == 422
    assert client.patch(f"/api/runs/{rid}", json={"name": None}).status_code == 422


def test_rename_onto_existing_name_is_409(client, snapshot) -> None:
    client.post("/api/runs", json={"name": "one"})
    rid = client.post("/api/runs", json={"name": "two"}).json()["id"]
    before = snapshot()
    resp = client.patch(f"/api/runs/{rid}", json={"name": "one"})
    assert resp.status_code == 409 and "'one'" in resp.json()["detail"]
    assert snapshot() == before
    assert client.patch(f"/api/runs/{rid}", json={"name": "two"}).status_code == 200


def test_delete_removes_rows_but_leaves_blobs(client, snapshot) -> None:
    from tests.server.conftest import safetensors_bytes

    rid = client.post("/api/runs", json={"name": "gone"}).json()["id"]
    up = client.post(
        f"/api/runs/{rid}/checkpoints",
        files={"file": ("c.safetensors", safetensors_bytes())},
        data={"step": "1"},
    )
    assert up.status_code == 201, up.text
    client.post(f"/api/runs/{rid}/metrics", json=[{"step": 1, "name": "loss", "value": 1.0}])
    blobs = snapshot().blobs
    assert client.delete(f"/api/runs/{rid}").status_code == 204
    after = snapshot()
    assert after.rows == {"runs": 0, "checkpoints": 0, "metric_points": 0, "jobs": 0}
    assert after.blobs == blobs  # left for a GC: the bytes may be shared with other runs
    assert client.get(f"/api/runs/{rid}").status_code == 404
