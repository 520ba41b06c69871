"""Chat completions: OpenAI request -> generation request -> OpenAI response or SSE stream."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing

from fastapi import Request, Response
from sse_starlette import EventSourceResponse

from app.errors import OpenAIError, from_engine_error
from app.metrics import RequestTracker, ServerMetrics
from app.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatMessage,
    PromptTokensDetails,
    Usage,
)
from app.serving.disconnect import ClientDisconnected, until_disconnected
from app.serving.sse import DONE, ChunkRenderer
from app.settings import ServerSettings
from engines.base import Event, Finished, GenerationRequest, Message, TokenEvent
from engines.errors import EngineError
from engines.pool import EnginePool
from engines.sampling import SamplingParams

log = logging.getLogger("slmserve.chat")

# nginx's convention for "client closed the request"; nobody reads it, access logs show it.
CLIENT_CLOSED_REQUEST = 499
SSE_PING_SECONDS = 15


def _unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="unsupported_parameter")


def _reject_unsupported_fields(body: ChatCompletionRequest) -> None:
    """Fields OpenAI defines that slmserve cannot honour yet: a clear 400, never an ignore."""
    if body.n not in (None, 1):
        raise _unsupported("n", "n > 1 is not supported yet; send one request per choice.")
    if body.logprobs or body.top_logprobs:
        raise _unsupported("logprobs", "logprobs are not supported yet.")
    if body.logit_bias:
        raise _unsupported("logit_bias", "logit_bias is not supported yet.")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise _unsupported(
            "response_format", "response_format other than 'text' is not supported yet."
        )
    if body.tools or body.functions:
        raise _unsupported("tools", "tools and function calling are not supported yet.")
    if body.tool_choice not in (None, "none") or body.function_call not in (None, "none"):
        raise _unsupported("tool_choice", "tool_choice needs tools, which are not supported yet.")
    if body.modalities and set(body.modalities) != {"text"}:
        raise _unsupported("modalities", "only the 'text' modality is supported.")
    if body.audio:
        raise _unsupported("audio", "audio output is not supported.")
    if body.prediction:
        raise _unsupported("prediction", "predicted outputs are not supported.")
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )


def _message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant":
            return ""
        raise OpenAIError(
            400, f"messages[{index}] has no content.", param=f"messages[{index}].content"
        )
    if isinstance(content, str):
        return content
    texts = []
    for part_index, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise _unsupported(
                f"messages[{index}].content[{part_index}]",
                f"content parts of type {part.type!r} are not supported: slmserve serves "
                "text-only models.",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _engine_messages(body: ChatCompletionRequest) -> tuple[Message, ...]:
    messages = []
    for index, message in enumerate(body.messages):
        if message.role in ("tool", "function") or message.tool_calls:
            raise _unsupported(f"messages[{index}].role", "tool messages are not supported yet.")
        # "developer" is OpenAI's newer name for "system"; model templates know "system".
        role = "system" if message.role == "developer" else message.role
        messages.append(
            Message(role=role, content=_message_text(message, index), name=message.name)
        )
    return tuple(messages)


def _enforce_limits(body: ChatCompletionRequest, settings: ServerSettings) -> None:
    if len(body.messages) > settings.max_messages:
        raise OpenAIError(
            400,
            f"This server accepts at most {settings.max_messages} messages per request; "
            f"this one has {len(body.messages)}.",
            param="messages",
            code="too_many_messages",
        )
    cap = settings.max_tokens_cap
    requested = body.max_completion_tokens or body.max_tokens
    if cap is not None and requested is not None and requested > cap:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise OpenAIError(
            400,
            f"'{param}' is limited to {cap} on this server; the request asked for {requested}.",
            param=param,
            code="invalid_value",
        )


def to_generation_request(
    request_id: str, body: ChatCompletionRequest, settings: ServerSettings
) -> GenerationRequest:
    _reject_unsupported_fields(body)
    _enforce_limits(body, settings)
    return GenerationRequest(
        request_id=request_id,
        messages=_engine_messages(body),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        max_tokens_ceiling=settings.max_tokens_cap,
        stop=body.stop_sequences(),
        sampling=SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            repetition_penalty=body.repetition_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            seed=body.seed,
        ),
    )


def _usage(finished: Finished) -> Usage:
    return Usage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=finished.cached_prompt_tokens),
    )


class ChatServing:
    """Serves /v1/chat/completions on top of the engine pool."""

    def __init__(self, pool: EnginePool, metrics: ServerMetrics, settings: ServerSettings) -> None:
        self._pool = pool
        self._metrics = metrics
        self._settings = settings

    def _log_finished(
        self, request_id: str, body: ChatCompletionRequest, finished: Finished, text: str
    ) -> None:
        """One line per request: sizes and timings always; content only if log_prompts."""
        log.info(
            "%s model=%s user=%s prompt_tokens=%d cached=%d completion_tokens=%d finish=%s "
            "ttft=%.3fs generation=%.3fs",
            request_id,
            body.model,
            body.user or "-",
            finished.prompt_tokens,
            finished.cached_prompt_tokens,
            finished.completion_tokens,
            finished.finish_reason,
            finished.time_to_first_token_s,
            finished.generation_s,
        )
        if self._settings.log_prompts:
            messages = [message.model_dump(exclude_none=True) for message in body.messages]
            log.info("%s messages=%s output=%r", request_id, messages, text)

    async def create(self, body: ChatCompletionRequest, raw_request: Request) -> Response:
        if unknown := body.unknown_fields():
            log.info("ignoring unknown request fields: %s", ", ".join(unknown))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        # On request.state so the error handlers count a failure through it, exactly once.
        tracker = raw_request.state.tracker = self._metrics.track(body.model)
        generation = to_generation_request(request_id, body, self._settings)
        events = _observed(self._pool.generate(body.model, generation), tracker)
        try:
            if body.stream:
                # Wait for the prompt to be accepted before answering 200: a request that
                # cannot run (unknown model, too long, full queue) gets a real HTTP error.
                first = await until_disconnected(raw_request, anext(events))
                return EventSourceResponse(
                    self._stream(body, request_id, first, events, tracker),
                    sep="\n",
                    ping=SSE_PING_SECONDS,
                )
            completion = await until_disconnected(
                raw_request, self._complete(body, request_id, events)
            )
        except ClientDisconnected:
            log.info("client left before %s finished; generation cancelled", request_id)
            tracker.aborted()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except BaseException:
            await events.aclose()
            raise
        return Response(completion.model_dump_json(), media_type="application/json")

    async def _complete(
        self, body: ChatCompletionRequest, request_id: str, events: AsyncGenerator[Event, None]
    ) -> ChatCompletion:
        parts: list[str] = []
        finished: Finished | None = None
        async for event in events:
            if isinstance(event, TokenEvent):
                parts.append(event.text)
            elif isinstance(event, Finished):
                parts.append(event.text)
                finished = event
        assert finished is not None, "the pool ends every request with Finished or an error"
        self._log_finished(request_id, body, finished, "".join(parts))
        return ChatCompletion(
            id=request_id,
            model=body.model,
            choices=[
                ChatCompletionChoice(
                    index=0,
                    message=AssistantMessage(content="".join(parts)),
                    finish_reason=finished.finish_reason,
                )
            ],
            usage=_usage(finished),
        )

    async def _stream(
        self,
        body: ChatCompletionRequest,
        request_id: str,
        first: Event,
        events: AsyncGenerator[Event, None],
        tracker: RequestTracker,
    ) -> AsyncIterator[bytes]:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = ChunkRenderer(request_id, int(time.time()), body.model, include_usage)

        sent: list[str] = []  # kept only when the content is to be logged

        def render(event: Event) -> Iterator[bytes]:
            if isinstance(event, TokenEvent):
                if event.text:
                    if self._settings.log_prompts:
                        sent.append(event.text)
                    yield chunks.content(event.text)
            elif isinstance(event, Finished):
                if event.text:
                    sent.append(event.text)
                    yield chunks.content(event.text)
                self._log_finished(request_id, body, event, "".join(sent))
                yield chunks.finish(event.finish_reason)
                if include_usage:
                    yield chunks.usage(_usage(event))

        try:
            yield chunks.role()
            for payload in render(first):
                yield payload
            async for event in events:
                for payload in render(event):
                    yield payload
        except EngineError as error:
            log.warning("stream %s failed: %s", request_id, error.message)
            failure = from_engine_error(error)
            tracker.failed(failure.detail.code)
            yield chunks.error(failure.body())
        except Exception:
            log.exception("stream %s failed unexpectedly", request_id)
            internal = OpenAIError(
                500, "The server had an internal error.", type="server_error", code="internal_error"
            )
            tracker.failed(internal.detail.code)
            yield chunks.error(internal.body())
        finally:
            # Also runs when the client disconnects and the stream is cancelled; the pool's
            # cleanup is synchronous, so the slot is free before the next token.
            tracker.aborted()  # no-op unless the stream ended early
            await events.aclose()
        yield DONE


async def _observed(
    events: AsyncGenerator[Event, None], tracker: RequestTracker
) -> AsyncGenerator[Event, None]:
    """The events, each shown to the request's metrics tracker as it passes."""
    async with aclosing(events):
        async for event in events:
            tracker.observe(event)
            yield event
