"""Server-sent event payloads for a chat completion stream, cheap per token.

Every content delta of a stream differs only in its text, so the chunk is serialised once from
the protocol model with a placeholder, and each token then costs one JSON string escape and two
concatenations. The other chunks (role, finish, usage, error) go through the models as usual.
"""

from __future__ import annotations

import json

from app.protocol import ChatCompletionChunk, ChunkChoice, ChunkDelta, Usage

_PLACEHOLDER = "\u0000slmserve-content\u0000"


def event(payload: str) -> bytes:
    """One SSE event, framed exactly as OpenAI frames it."""
    return b"data: " + payload.encode() + b"\n\n"


DONE = event("[DONE]")


class ChunkRenderer:
    """Renders the events of one streamed chat completion."""

    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._request_id = request_id
        self._created = created
        self._model = model
        # With include_usage, OpenAI sends "usage": null on every chunk but the last.
        self._exclude = None if include_usage else {"usage"}
        template = event(self._chunk(ChunkDelta(content=_PLACEHOLDER)))
        marker = json.dumps(_PLACEHOLDER).encode()
        self._content_prefix, _, self._content_suffix = template.partition(marker)
        assert self._content_suffix, "the placeholder must appear in the template"

    def _chunk(self, delta: ChunkDelta, finish_reason: str | None = None) -> str:
        return ChatCompletionChunk(
            id=self._request_id,
            created=self._created,
            model=self._model,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
        ).model_dump_json(exclude=self._exclude)

    def role(self) -> bytes:
        return event(self._chunk(ChunkDelta(role="assistant", content="")))

    def content(self, text: str) -> bytes:
        escaped = json.dumps(text, ensure_ascii=False).encode()
        return self._content_prefix + escaped + self._content_suffix

    def finish(self, reason: str) -> bytes:
        return event(self._chunk(ChunkDelta(), finish_reason=reason))

    def usage(self, usage: Usage) -> bytes:
        chunk = ChatCompletionChunk(
            id=self._request_id,
            created=self._created,
            model=self._model,
            choices=[],
            usage=usage,
        )
        return event(chunk.model_dump_json())

    @staticmethod
    def error(body: dict[str, object]) -> bytes:
        return event(json.dumps(body))
