"""Embeddings (/v1/embeddings): mean-pooled, L2-normalised, from GGUF models.

ONNX models answer 400 (their engine refuses); `dimensions` is accepted only when it is the
model's own width (these models were not trained to be truncated).
"""

from __future__ import annotations

import base64
import uuid

import numpy as np
from fastapi import Request, Response

from app.errors import OpenAIError
from app.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from app.serving.core import CLIENT_CLOSED_REQUEST, ServingCore
from app.serving.disconnect import ClientDisconnected, until_disconnected
from app.serving.generation import unsupported


def _texts(body: EmbeddingRequest) -> tuple[str, ...]:
    if isinstance(body.input, str):
        return (body.input,)
    if not body.input:
        raise OpenAIError(400, "The input is empty.", param="input", code="invalid_value")
    if all(isinstance(item, str) for item in body.input):
        return tuple(item for item in body.input if isinstance(item, str))
    raise unsupported("input", "token-id inputs are not supported; send the input as text.")


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the OpenAI SDKs ask for by default: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


class EmbeddingServing:
    def __init__(self, core: ServingCore) -> None:
        self._pool = core.pool
        self._core = core

    async def create(self, body: EmbeddingRequest, raw_request: Request) -> Response:
        tracker = self._core.track(raw_request, body.model, "embeddings")
        texts = _texts(body)
        request_id = f"embd-{uuid.uuid4().hex}"
        try:
            result = await until_disconnected(
                raw_request, self._pool.embed(body.model, request_id, texts)
            )
        except ClientDisconnected:
            tracker.aborted()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        width = len(result.vectors[0])
        if body.dimensions is not None and body.dimensions != width:
            raise OpenAIError(
                400,
                f"model {body.model!r} gives {width}-dimensional embeddings; it cannot shorten "
                "them to the requested dimensions.",
                param="dimensions",
                code="unsupported_parameter",
            )
        data = [
            Embedding(index=index, embedding=_encoded(vector, body.encoding_format))
            for index, vector in enumerate(result.vectors)
        ]
        usage = EmbeddingUsage(
            prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
        )
        tracker.embedded(result.prompt_tokens)
        answer = EmbeddingList(data=data, model=body.model, usage=usage)
        return Response(answer.model_dump_json(), media_type="application/json")
