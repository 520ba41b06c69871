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
    """200 once every preloaded model is loaded and warm; 503 (with each model's state) before,
    and from the moment a shutdown signal arrives (`draining`: load balancers stop sending)."""
    pool = request.app.state.pool
    states = {status.name: status.state.value for status in pool.statuses()}
    draining = getattr(request.app.state, "draining", False)
    is_ready = pool.is_ready() and not draining
    status = "ready" if is_ready else "draining" if draining else "not_ready"
    return JSONResponse({"status": status, "models": states}, status_code=200 if is_ready else 503)
