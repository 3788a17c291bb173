"""JSON API under ``/api``: one router per resource."""

from __future__ import annotations

import importlib

from fastapi import APIRouter

# Resource modules; each defines ``router``. A module that does not exist yet is skipped so
# the app starts while parts are being built.
_RESOURCES = ["health", "runs", "checkpoints", "metrics", "jobs", "phases", "shares"]


def build_api_router() -> APIRouter:
    api = APIRouter(prefix="/api")
    for name in _RESOURCES:
        try:
            module = importlib.import_module(f"server.api.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"server.api.{name}":
                raise
            continue
        api.include_router(module.router)
    return api
