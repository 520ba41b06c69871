"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.protocol import EmbeddingList, EmbeddingRequest, ErrorResponse

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingList,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    response: Response = await request.app.state.embedding_serving.create(body, request)
    return response
