"""Prompt utilities: POST /tokenize, /detokenize, /apply-template; GET /tokenizer_info."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.protocol import ErrorResponse
from app.serving.utility import (
    ApplyTemplateRequest,
    DetokenizeRequest,
    PromptResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfoResponse,
    UtilityServing,
)

router = APIRouter()

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


def _serving(request: Request) -> UtilityServing:
    serving: UtilityServing = request.app.state.utility_serving
    return serving


def _json(answer: TokenizeResponse | PromptResponse | TokenizerInfoResponse) -> Response:
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    return _json(await _serving(request).tokenize(body))


@router.post("/detokenize", response_model=PromptResponse, responses=_ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    return _json(await _serving(request).detokenize(body))


@router.post("/apply-template", response_model=PromptResponse, responses=_ERRORS)
async def apply_template(body: ApplyTemplateRequest, request: Request) -> Response:
    return _json(await _serving(request).apply_template(body))


@router.get("/tokenizer_info", response_model=TokenizerInfoResponse, responses=_ERRORS)
async def tokenizer_info(request: Request, model: str | None = None) -> Response:
    return _json(await _serving(request).tokenizer_info(model))
