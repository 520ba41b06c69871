"""Server-sent event payloads for a chat completion stream, cheap per token.

Most chunks of a stream are plain content deltas that differ only in their text, so that chunk
is serialised once per choice from the protocol model with a placeholder, and each token then
costs one JSON string escape and two concatenations. Everything else (roles, tool calls,
logprobs, finish, usage, errors) goes through the models as usual.
"""

from __future__ import annotations

import json

from app.protocol import ChatCompletionChunk, ChoiceLogprobs, ChunkChoice, ChunkDelta, Usage

_PLACEHOLDER = "\u0000slmserve-content\u0000"


def event(payload: str) -> bytes:
    """One SSE event, framed exactly as OpenAI frames it."""
    return b"data: " + payload.encode() + b"\n\n"


DONE = event("[DONE]")


def error_event(body: dict[str, object]) -> bytes:
    return event(json.dumps(body))


class ChunkRenderer:
    """Renders the events of one streamed chat completion."""

    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._request_id = request_id
        self._created = created
        self._model = model
        # With include_usage, OpenAI sends "usage": null on every chunk but the last.
        self._exclude = None if include_usage else {"usage"}
        self._templates: dict[int, tuple[bytes, bytes]] = {}

    def delta(
        self,
        index: int,
        delta: ChunkDelta,
        *,
        logprobs: ChoiceLogprobs | None = None,
        finish_reason: str | None = None,
    ) -> bytes:
        chunk = ChatCompletionChunk(
            id=self._request_id,
            created=self._created,
            model=self._model,
            choices=[
                ChunkChoice(
                    index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason
                )
            ],
        )
        return event(chunk.model_dump_json(exclude=self._exclude))

    def content(self, text: str, index: int = 0) -> bytes:
        template = self._templates.get(index)
        if template is None:
            rendered = self.delta(index, ChunkDelta(content=_PLACEHOLDER))
            prefix, _, suffix = rendered.partition(json.dumps(_PLACEHOLDER).encode())
            template = self._templates[index] = (prefix, suffix)
        escaped = json.dumps(text, ensure_ascii=False).encode()
        return template[0] + escaped + template[1]

    def role(self, index: int, *, content: str | None = "") -> bytes:
        return self.delta(index, ChunkDelta(role="assistant", content=content))

    def finish(self, index: int, reason: str, logprobs: ChoiceLogprobs | None = None) -> bytes:
        return self.delta(index, ChunkDelta(), logprobs=logprobs, finish_reason=reason)

    def usage(self, usage: Usage) -> bytes:
        chunk = ChatCompletionChunk(
            id=self._request_id,
            created=self._created,
            model=self._model,
            choices=[],
            usage=usage,
        )
        return event(chunk.model_dump_json())
