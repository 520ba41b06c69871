"""Chat completions: OpenAI request -> generation requests -> OpenAI response or SSE stream."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request, Response

from app.errors import OpenAIError
from app.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceLogprobs,
    ChunkDelta,
    PromptTokensDetails,
    TokenLogprobOut,
    ToolCallDelta,
    Usage,
)
from app.serving.core import ServingCore
from app.serving.generation import (
    ChoiceEvent,
    check_max_tokens,
    choices_of,
    logit_bias_from,
    sampling_from,
    unsupported,
)
from app.serving.logprobs import chat_logprob
from app.serving.sse import ChunkRenderer
from app.serving.tool_calls import (
    ToolCallStream,
    ToolPlan,
    forced_calls,
    parse_tool_calls,
    plan_tools,
    tool_call_deltas,
)
from app.settings import ServerSettings
from engines.base import Event, Finished, GenerationRequest, JsonConstraint, Message, TokenEvent

log = logging.getLogger("slmserve.chat")


# -- request -> generation -----------------------------------------------------------------


def _reject_unsupported_fields(body: ChatCompletionRequest) -> None:
    """Fields OpenAI defines that slmserve cannot honour: a clear 400, never an ignore."""
    if body.functions or body.function_call not in (None, "none"):
        raise unsupported("functions", "functions/function_call are deprecated; use tools.")
    if body.modalities and set(body.modalities) != {"text"}:
        raise unsupported("modalities", "only the 'text' modality is supported.")
    if body.audio:
        raise unsupported("audio", "audio output is not supported.")
    if body.prediction:
        raise unsupported("prediction", "predicted outputs are not supported.")
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise OpenAIError(
            400,
            "'top_logprobs' needs 'logprobs' set to true.",
            param="top_logprobs",
            code="invalid_value",
        )


def _enforce_limits(body: ChatCompletionRequest, settings: ServerSettings) -> None:
    if len(body.messages) > settings.max_messages:
        raise OpenAIError(
            400,
            f"This server accepts at most {settings.max_messages} messages per request; "
            f"this one has {len(body.messages)}.",
            param="messages",
            code="too_many_messages",
        )
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    check_max_tokens(body.max_completion_tokens or body.max_tokens, param, settings)


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
            raise unsupported(
                f"messages[{index}].content[{part_index}]",
                f"content parts of type {part.type!r} are not supported: slmserve serves "
                "text-only models.",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _engine_messages(body: ChatCompletionRequest) -> tuple[Message, ...]:
    messages = []
    for index, message in enumerate(body.messages):
        if message.role == "function":
            raise unsupported(
                f"messages[{index}].role", "'function' messages are deprecated; use 'tool'."
            )
        if message.role == "tool" and not message.tool_call_id:
            raise OpenAIError(
                400,
                f"messages[{index}] is a tool result without 'tool_call_id'.",
                param=f"messages[{index}].tool_call_id",
                code="invalid_value",
            )
        calls = tuple(call.model_dump() for call in message.tool_calls or ())
        # "developer" is OpenAI's newer name for "system"; model templates know "system".
        role = "system" if message.role == "developer" else message.role
        messages.append(
            Message(
                role=role,
                content=_message_text(message, index),
                name=message.name,
                tool_calls=calls,
                tool_call_id=message.tool_call_id,
            )
        )
    return tuple(messages)


def _constraint(body: ChatCompletionRequest, tools: ToolPlan) -> JsonConstraint | None:
    format_ = body.response_format
    if format_ is None or format_.type == "text":
        return tools.constraint
    if tools.mode == "forced":
        raise OpenAIError(
            400,
            "response_format cannot be combined with a required or named tool_choice.",
            param="response_format",
            code="invalid_value",
        )
    if format_.type == "json_object":
        return JsonConstraint()
    if format_.json_schema is None or format_.json_schema.json_schema is None:
        raise OpenAIError(
            400,
            "response_format of type json_schema needs json_schema.schema.",
            param="response_format",
            code="invalid_value",
        )
    return JsonConstraint(json.dumps(format_.json_schema.json_schema))


def plan_chat(
    request_id: str, body: ChatCompletionRequest, settings: ServerSettings
) -> tuple[list[GenerationRequest], ToolPlan]:
    _reject_unsupported_fields(body)
    _enforce_limits(body, settings)
    tools = plan_tools(body)
    base = GenerationRequest(
        request_id=request_id,
        messages=_engine_messages(body),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        max_tokens_ceiling=settings.max_tokens_cap,
        stop=body.stop_sequences(),
        sampling=sampling_from(body),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        logit_bias=logit_bias_from(body),
        constraint=_constraint(body, tools),
        tools=tools.tools,
    )
    return choices_of(base, body.n or 1), tools


def _usage(finished: list[Finished]) -> Usage:
    """OpenAI counts the prompt once however many choices there are."""
    prompt = finished[0].prompt_tokens
    completion = sum(f.completion_tokens for f in finished)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=finished[0].cached_prompt_tokens),
    )


# -- streaming state -----------------------------------------------------------------------


@dataclass
class _ChoiceStream:
    """One choice of a stream: whether its text is content or a tool call, and what is held."""

    index: int
    mode: Literal["content", "forced", "undecided", "held"]
    tool_names: frozenset[str]
    forced_name: str | None = None
    calls: ToolCallStream = field(default_factory=ToolCallStream)
    held: str = ""
    sent: list[str] = field(default_factory=list)  # for the log
    logprobs: list[TokenLogprobOut] = field(default_factory=list)

    def take_logprobs(self) -> ChoiceLogprobs | None:
        if not self.logprobs:
            return None
        taken, self.logprobs = self.logprobs, []
        return ChoiceLogprobs(content=taken)

    def text(self, text: str, chunks: ChunkRenderer) -> list[bytes]:
        if self.mode == "forced":
            deltas = self.calls.feed(text)
            return [self._calls(deltas, chunks)] if deltas else []
        if self.mode in ("undecided", "held"):
            self.held += text
            if self.mode == "held":
                return []
            start = self.held.lstrip()[:1]
            if not start:
                return []
            # With tool_choice "auto" an answer that starts like a call is held to the end.
            self.mode = "held" if start in "{<" else "content"
            if self.mode == "held":
                return []
            text, self.held = self.held, ""
        if not text and not self.logprobs:
            return []
        self.sent.append(text)
        logprobs = self.take_logprobs()
        if logprobs is None:
            return [chunks.content(text, self.index)]
        return [chunks.delta(self.index, ChunkDelta(content=text), logprobs=logprobs)]

    def _calls(self, deltas: list[ToolCallDelta], chunks: ChunkRenderer) -> bytes:
        delta = ChunkDelta(tool_calls=deltas)
        return chunks.delta(self.index, delta, logprobs=self.take_logprobs())

    def finish(self, finished: Finished, chunks: ChunkRenderer) -> list[bytes]:
        rendered = self.text(finished.text, chunks)
        reason: str = finished.finish_reason
        if self.mode == "forced" and reason == "length":
            # Cut off by max_tokens: still a tool call, its arguments as far as they got.
            if deltas := self.calls.cut_off(self.forced_name):
                rendered.append(self._calls(deltas, chunks))
        elif self.mode == "forced" and self.calls.started and reason == "stop":
            reason = "tool_calls"
        elif self.mode in ("held", "undecided") and self.held:
            held, self.held = self.held, ""
            calls = parse_tool_calls(held, self.tool_names) if reason == "stop" else []
            if calls:
                rendered.append(self._calls(tool_call_deltas(calls), chunks))
                reason = "tool_calls"
            else:
                self.sent.append(held)
                rendered.append(chunks.content(held, self.index))
        rendered.append(chunks.finish(self.index, reason, self.take_logprobs()))
        return rendered


# -- serving -------------------------------------------------------------------------------


class ChatServing:
    """Serves /v1/chat/completions on top of the serving core."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self._settings = core.settings

    def _log_finished(self, body: ChatCompletionRequest, finished: Finished, text: str) -> None:
        messages = [message.model_dump(exclude_none=True) for message in body.messages]
        self._core.log_finished(
            finished.request_id, body.model, body.user, finished, text, prompt=messages
        )

    async def create(self, body: ChatCompletionRequest, raw_request: Request) -> Response:
        if unknown := body.unknown_fields():
            log.info("ignoring unknown request fields: %s", ", ".join(unknown))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        tracker = self._core.track(raw_request, body.model, "chat_completions")
        generations, tools = plan_chat(request_id, body, self._settings)

        return await self._core.serve(
            raw_request,
            tracker,
            request_id=request_id,
            model=body.model,
            generations=generations,
            choices_per_prompt=len(generations),
            stream=body.stream,
            render_stream=lambda first, events: self._stream(
                body, request_id, tools, first, events
            ),
            render_answer=lambda events: self._complete(body, request_id, tools, events),
        )

    async def _complete(
        self,
        body: ChatCompletionRequest,
        request_id: str,
        tools: ToolPlan,
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> ChatCompletion:
        choices = body.n or 1
        texts: list[list[str]] = [[] for _ in range(choices)]
        logprobs: list[list[TokenLogprobOut]] = [[] for _ in range(choices)]
        finished: dict[int, Finished] = {}
        async for index, event in events:
            if isinstance(event, TokenEvent):
                texts[index].append(event.text)
                if event.logprob is not None:
                    logprobs[index].append(chat_logprob(event.logprob))
            elif isinstance(event, Finished):
                texts[index].append(event.text)
                finished[index] = event
        assert len(finished) == choices, "the pool ends every request with Finished or an error"
        results = []
        for index in range(choices):
            text, done = "".join(texts[index]), finished[index]
            self._log_finished(body, done, text)
            calls = []
            if tools.mode == "forced":
                calls = forced_calls(text, tools)
            elif tools.mode == "auto" and done.finish_reason == "stop":
                calls = parse_tool_calls(text, tools.names)
            message = (
                AssistantMessage(content=None, tool_calls=calls)
                if calls
                else AssistantMessage(content=text)
            )
            reason = done.finish_reason
            results.append(
                ChatCompletionChoice(
                    index=index,
                    message=message,
                    logprobs=ChoiceLogprobs(content=logprobs[index]) if body.logprobs else None,
                    finish_reason="tool_calls" if calls and reason == "stop" else reason,
                )
            )
        usage = _usage([finished[index] for index in range(choices)])
        return ChatCompletion(id=request_id, model=body.model, choices=results, usage=usage)

    async def _stream(
        self,
        body: ChatCompletionRequest,
        request_id: str,
        tools: ToolPlan,
        first: list[ChoiceEvent],
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> AsyncIterator[bytes]:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = ChunkRenderer(request_id, int(time.time()), body.model, include_usage)
        mode: Literal["content", "forced", "undecided"] = {
            "none": "content",
            "auto": "undecided",
            "forced": "forced",
        }[tools.mode]  # type: ignore[assignment]
        streams = [
            _ChoiceStream(index, mode, tools.names, tools.forced_name)
            for index in range(body.n or 1)
        ]
        finished: dict[int, Finished] = {}

        def render(index: int, event: Event) -> list[bytes]:
            stream = streams[index]
            if isinstance(event, TokenEvent):
                if event.logprob is not None:
                    stream.logprobs.append(chat_logprob(event.logprob))
                return stream.text(event.text, chunks)
            if isinstance(event, Finished):
                finished[index] = event
                rendered = stream.finish(event, chunks)
                self._log_finished(body, event, "".join(stream.sent))
                if include_usage and len(finished) == len(streams):
                    rendered.append(chunks.usage(_usage([finished[i] for i in sorted(finished)])))
                return rendered
            return []

        for stream in streams:
            content = None if stream.mode == "forced" else ""
            yield chunks.role(stream.index, content=content)
        for index, event in first:
            for payload in render(index, event):
                yield payload
        async for index, event in events:
            for payload in render(index, event):
                yield payload
