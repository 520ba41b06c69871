"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.protocol import Completion, CompletionRequest, ErrorResponse

router = APIRouter()


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={
        200: {"content": {"text/event-stream": {}}},
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    response: Response = await request.app.state.completion_serving.create(body, request)
    return response
