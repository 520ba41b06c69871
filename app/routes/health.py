"""Liveness (/health) and readiness (/ready) probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The process answers: the event loop is not blocked."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once every preloaded model is loaded and warm; 503 (with each model's state) before."""
    pool = request.app.state.pool
    states = {status.name: status.state.value for status in pool.statuses()}
    is_ready = pool.is_ready()
    return JSONResponse(
        {"status": "ready" if is_ready else "not_ready", "models": states},
        status_code=200 if is_ready else 503,
    )
