"""Administration: load or unload a model now.

Guarded by the admin key, or refused outright (403) on a non-loopback address without one: see
app/auth.py, which checks before routing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.protocol import ErrorResponse, ModelCard
from app.routes.models import model_card

router = APIRouter(prefix="/admin", tags=["admin"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong admin (or API) key"},
    403: {"model": ErrorResponse, "description": "No admin key set on a non-loopback address"},
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


@router.post("/models/{model:path}/load", response_model=ModelCard, responses=_ERRORS)
async def load_model(model: str, request: Request) -> ModelCard:
    """Load (and warm) the model now; a failed model is tried again."""
    status = await request.app.state.pool.load(model)
    return model_card(status, request.app.state.started_at)


@router.post("/models/{model:path}/unload", response_model=ModelCard, responses=_ERRORS)
async def unload_model(model: str, request: Request) -> ModelCard:
    """Unload the model once its running requests finish; its next request loads it again."""
    status = await request.app.state.pool.unload(model)
    return model_card(status, request.app.state.started_at)
