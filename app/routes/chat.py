"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.protocol import ChatCompletion, ChatCompletionRequest, ErrorResponse

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}},
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    response: Response = await request.app.state.chat_serving.create(body, request)
    return response
