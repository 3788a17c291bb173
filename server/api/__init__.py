"""JSON API under ``/api``: one router per resource."""

from __future__ import annotations

from fastapi import APIRouter

from server.api import checkpoints, health, jobs, lenses, metrics, phases, runs, shares


def build_api_router() -> APIRouter:
    api = APIRouter(prefix="/api")
    for module in (health, runs, checkpoints, metrics, jobs, phases, shares, lenses):
        api.include_router(module.router)
    return api
