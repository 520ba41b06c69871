"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.protocol_anthropic import (
    AnthropicErrorResponse,
    AnthropicMessage,
    CountTokensRequest,
    CountTokensResponse,
    MessagesRequest,
)

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}


@router.post(
    "/v1/messages",
    response_model=AnthropicMessage,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    response: Response = await request.app.state.anthropic_serving.create(body, request)
    return response


@router.post("/v1/messages/count_tokens", response_model=CountTokensResponse, responses=ERRORS)
async def count_message_tokens(body: CountTokensRequest, request: Request) -> Response:
    response: Response = await request.app.state.anthropic_serving.count_tokens(body, request)
    return response
