"""/v1/responses: OpenAI's Responses API (create, retrieve, delete, input items)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.protocol import ErrorResponse
from app.protocol_responses import (
    InputItemList,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseObject,
)
from app.serving.responses import ResponsesServing

router = APIRouter()

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
}


def _serving(request: Request) -> ResponsesServing:
    serving: ResponsesServing = request.app.state.responses_serving
    return serving


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **ERRORS,
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def create_response(body: ResponseCreateRequest, request: Request) -> Response:
    return await _serving(request).create(body, request)


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=ERRORS)
async def retrieve_response(response_id: str, request: Request, stream: bool = False) -> Response:
    return await _serving(request).retrieve(response_id, stream=stream)


@router.delete("/v1/responses/{response_id}", response_model=ResponseDeleted, responses=ERRORS)
async def delete_response(response_id: str, request: Request) -> Response:
    return await _serving(request).delete(response_id)


@router.get(
    "/v1/responses/{response_id}/input_items", response_model=InputItemList, responses=ERRORS
)
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int | None = None,
    order: str | None = None,
    after: str | None = None,
) -> Response:
    return await _serving(request).input_items(response_id, limit=limit, order=order, after=after)
