"""GET /v1/models and /v1/models/{model}: OpenAI's listing plus each model's live state."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.protocol import ErrorResponse, ModelCard, ModelList
from engines.pool import ModelStatus

router = APIRouter()


def model_card(status: ModelStatus, created: int) -> ModelCard:
    return ModelCard(
        id=status.name,
        created=created,
        engine=status.engine,
        provider=status.provider,
        state=status.state.value,
        state_reason=status.reason,
        context_length=status.context_length,
        parallel=status.parallel,
        running=status.running,
        waiting=status.waiting,
        pid=status.pid,
        load_seconds=status.load_seconds,
        last_used=int(status.last_used) if status.last_used is not None else None,
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
