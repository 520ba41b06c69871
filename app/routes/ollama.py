"""Ollama's API (/api/*): chat, generate, embeddings, the model listing; model management is
refused (the models are configured in models.yaml)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.errors import OpenAIError
from app.protocol_ollama import (
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    OllamaErrorResponse,
    PsResponse,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)
from app.serving.ollama import OllamaServing

router = APIRouter(prefix="/api", tags=["ollama"])

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OllamaErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}
STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"application/x-ndjson": {}}}}


def _serving(request: Request) -> OllamaServing:
    serving: OllamaServing = request.app.state.ollama_serving
    return serving


@router.post("/chat", response_model=ChatResponse, responses={**STREAMED, **ERRORS})
async def chat(body: ChatRequest, request: Request) -> Response:
    return await _serving(request).chat(body, request)


@router.post("/generate", response_model=GenerateResponse, responses={**STREAMED, **ERRORS})
async def generate(body: GenerateRequest, request: Request) -> Response:
    return await _serving(request).generate(body, request)


@router.post("/embed", response_model=EmbedResponse, responses=ERRORS)
async def embed(body: EmbedRequest, request: Request) -> Response:
    return await _serving(request).embed(body, request)


@router.post("/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
    return await _serving(request).embeddings(body, request)


@router.get("/tags", response_model=TagsResponse)
async def tags(request: Request) -> TagsResponse:
    return await _serving(request).tags()


@router.get("/ps", response_model=PsResponse)
async def ps(request: Request) -> PsResponse:
    return await _serving(request).ps()


@router.post("/show", response_model=ShowResponse, responses=ERRORS)
async def show(body: ShowRequest, request: Request) -> ShowResponse:
    return await _serving(request).show(body)


@router.get("/version", response_model=VersionResponse)
async def version() -> VersionResponse:
    return OllamaServing.version()


def _not_here(action: str) -> OpenAIError:
    """A 400, not a 501: a client asking for something this server never does is the client's
    mistake to fix, and must not count as a server error on dashboards and alerts."""
    return OpenAIError(
        400,
        f"slmserve cannot {action}: the models it serves are configured in models.yaml (a "
        "GGUF file or an ONNX GenAI folder per model; `slmserve convert` makes the latter). "
        "GET /api/tags lists them.",
        code="unsupported_operation",
    )


_MANAGEMENT: dict[int | str, dict[str, Any]] = {400: {"model": OllamaErrorResponse}}


@router.post("/pull", responses=_MANAGEMENT)
async def pull() -> None:
    raise _not_here("pull models")


@router.post("/push", responses=_MANAGEMENT)
async def push() -> None:
    raise _not_here("push models")


@router.post("/create", responses=_MANAGEMENT)
async def create() -> None:
    raise _not_here("create models")


@router.post("/copy", responses=_MANAGEMENT)
async def copy() -> None:
    raise _not_here("copy models")


@router.delete("/delete", responses=_MANAGEMENT)
async def delete() -> None:
    raise _not_here("delete models")


@router.post("/blobs/{digest}", responses=_MANAGEMENT)
async def blobs(digest: str) -> None:
    raise _not_here("store model blobs")
