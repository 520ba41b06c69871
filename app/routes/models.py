"""GET /v1/models and /v1/models/{model}: OpenAI's listing plus each model's live state."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.protocol import ErrorResponse, ModelCard, ModelList
from engines.pool import ModelStatus

router = APIRouter()


def _unix(timestamp: float | None) -> int | None:
    return int(timestamp) if timestamp is not None else None


def model_card(status: ModelStatus, created: int) -> ModelCard:
    return ModelCard(
        id=status.name,
        created=created,
        engine=status.engine,
        provider=status.provider,
        state=status.state.value,
        state_reason=status.reason,
        preload=status.preload,
        pinned=status.pinned,
        keep_alive_s=status.keep_alive_s,
        context_length=status.context_length,
        parallel=status.parallel,
        max_queue=status.max_queue,
        running=status.running,
        waiting=status.waiting,
        pid=status.pid,
        resident_memory_bytes=status.resident_bytes,
        load_seconds=status.load_seconds,
        loaded_at=_unix(status.loaded_at),
        last_used=_unix(status.last_used),
        restarts=status.restarts,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    created = request.app.state.started_at
    return ModelList(data=[model_card(s, created) for s in request.app.state.pool.statuses()])


@router.get(
    "/v1/models/{model:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}}
)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    return model_card(request.app.state.pool.status(model), request.app.state.started_at)
