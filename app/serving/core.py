"""The serving core every API adapter shares: one request skeleton, written once.

An adapter (chat completions, completions, Responses, Anthropic Messages, Ollama) validates its
own wire format and turns a request into generation requests; the core runs them through the
pool with the request's metrics tracker, waits until every prompt is accepted before a stream
answers 200 (so a request that cannot run gets a real HTTP error), cancels the work when the
client leaves, and frames a stream: the adapter's chunks, an error event in the adapter's shape
if generation fails midway, then the adapter's terminator. Auth, body limits and the error
envelope sit in front of every route already (app/auth.py, app/limits.py, app/errors.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from app.errors import OpenAIError, from_engine_error
from app.metrics import RequestTracker, ServerMetrics
from app.serving.disconnect import ClientDisconnected, until_disconnected
from app.serving.generation import ChoiceEvent, generate_choices, observed, until_all_accepted
from app.serving.sse import DONE, error_event
from app.settings import ServerSettings
from engines.base import Finished, GenerationRequest
from engines.errors import EngineError
from engines.pool import EnginePool

log = logging.getLogger("slmserve.serving")

# nginx's convention for "client closed the request"; nobody reads it, access logs show it.
CLIENT_CLOSED_REQUEST = 499
SSE_PING_SECONDS = 15

Events = AsyncGenerator[ChoiceEvent, None]
# Renders a stream: the events read while waiting for acceptance, then the rest.
StreamRenderer = Callable[[list[ChoiceEvent], Events], AsyncIterator[bytes]]
# Renders a whole (non-streamed) answer from all the events: the body, sent as JSON.
AnswerRenderer = Callable[[Events], Awaitable[BaseModel]]


def openai_error_event(error: OpenAIError) -> bytes:
    return error_event(error.body())


@dataclass(frozen=True)
class StreamFraming:
    """How an API frames the end of a stream and an error in its middle, and its content type:
    None for server-sent events (with pings), else a plain stream of that type (NDJSON)."""

    error_event: Callable[[OpenAIError], bytes] = openai_error_event
    terminator: bytes | None = DONE
    media_type: str | None = None


OPENAI_FRAMING = StreamFraming()
INTERNAL_ERROR = OpenAIError(
    500, "The server had an internal error.", type="server_error", code="internal_error"
)


async def _framed(
    request_id: str,
    chunks: AsyncIterator[bytes],
    events: Events,
    tracker: RequestTracker,
    framing: StreamFraming,
) -> AsyncIterator[bytes]:
    """The adapter's chunks, an error event if generation fails, then the terminator.

    The cleanup also runs when the client disconnects and the stream is cancelled; the pool's
    cleanup is synchronous, so slots are free before the next token.
    """
    try:
        async for payload in chunks:
            yield payload
    except EngineError as error:
        log.warning("stream %s failed: %s", request_id, error.message)
        failure = from_engine_error(error)
        tracker.failed(failure.detail.code)
        yield framing.error_event(failure)
    except Exception:
        log.exception("stream %s failed unexpectedly", request_id)
        tracker.failed(INTERNAL_ERROR.detail.code)
        yield framing.error_event(INTERNAL_ERROR)
    finally:
        tracker.aborted()  # no-op unless the stream ended early
        await events.aclose()
    if framing.terminator is not None:
        yield framing.terminator


class ServingCore:
    """Runs planned generation requests for any API adapter."""

    def __init__(self, pool: EnginePool, metrics: ServerMetrics, settings: ServerSettings) -> None:
        self.pool = pool
        self.metrics = metrics
        self.settings = settings

    def log_finished(
        self,
        request_id: str,
        model: str,
        user: str | None,
        finished: Finished,
        text: str,
        prompt: object = None,
    ) -> None:
        """One line per generation: sizes and timings always; its prompt and text only with
        log_prompts (off by default: prompts are the users' data)."""
        log.info(
            "%s model=%s user=%s prompt_tokens=%d cached=%d completion_tokens=%d finish=%s "
            "ttft=%.3fs generation=%.3fs",
            request_id,
            model,
            user or "-",
            finished.prompt_tokens,
            finished.cached_prompt_tokens,
            finished.completion_tokens,
            finished.finish_reason,
            finished.time_to_first_token_s,
            finished.generation_s,
        )
        if self.settings.log_prompts:
            log.info("%s prompt=%s output=%r", request_id, prompt, text)

    def track(self, raw_request: Request, model: str, api: str) -> RequestTracker:
        """The request's metrics tracker, made before planning so that a refusal while planning
        is counted under the model; kept on request.state, where the error handlers count a
        failure through it, exactly once."""
        tracker: RequestTracker = self.metrics.track(model, api)
        raw_request.state.tracker = tracker
        return tracker

    async def serve(
        self,
        raw_request: Request,
        tracker: RequestTracker,
        *,
        request_id: str,
        model: str,
        generations: list[GenerationRequest],
        choices_per_prompt: int,
        stream: bool,
        render_stream: StreamRenderer,
        render_answer: AnswerRenderer,
        framing: StreamFraming = OPENAI_FRAMING,
    ) -> Response:
        tracker.expect(len(generations), choices_per_prompt)
        events = observed(generate_choices(self.pool, model, generations), tracker)
        try:
            if stream:
                # Every prompt accepted before answering 200: a request that cannot run
                # (unknown model, too long, full queue) gets a real HTTP error.
                accepted = until_all_accepted(events, len(generations))
                first = await until_disconnected(raw_request, accepted)
                chunks = render_stream(first, events)
                framed = _framed(request_id, chunks, events, tracker, framing)
                if framing.media_type is not None:
                    return StreamingResponse(framed, media_type=framing.media_type)
                return EventSourceResponse(
                    framed,
                    sep="\n",
                    ping=SSE_PING_SECONDS,
                )
            answer = await until_disconnected(raw_request, render_answer(events))
            return Response(answer.model_dump_json(), media_type="application/json")
        except ClientDisconnected:
            log.info("client left before %s finished; generation cancelled", request_id)
            tracker.aborted()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except BaseException:
            await events.aclose()
            raise
