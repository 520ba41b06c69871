"""Anthropic Messages API -> generation requests -> Anthropic messages and event streams.

A thin adapter on the serving core: the request becomes the same `GenerationRequest` a chat
completion would (tool_use blocks become assistant tool calls, tool_result blocks tool
messages, tools the same plan and JSON-schema forcing as chat completions), and the engine's
events become Anthropic's Message object or its SSE sequence: message_start, ping,
content_block_start / content_block_delta (text_delta, input_json_delta) / content_block_stop
per block, message_delta (stop reason, usage), message_stop; an `error` event if generation
fails midway, and no `[DONE]`.

Usage follows Anthropic: `input_tokens` are the prompt tokens not read from the prefix cache,
`cache_read_input_tokens` those that were; their sum is what count_tokens answers.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fastapi import Request, Response

from app.errors import OpenAIError, anthropic_error_body
from app.protocol_anthropic import (
    AnthropicMessage,
    AnthropicUsage,
    ContentBlock,
    CountTokensRequest,
    CountTokensResponse,
    MessageParam,
    MessagesBase,
    MessagesRequest,
    StopReason,
    TextBlock,
    ToolUseBlock,
)
from app.serving.core import CLIENT_CLOSED_REQUEST, ServingCore, StreamFraming
from app.serving.disconnect import ClientDisconnected, until_disconnected
from app.serving.generation import ChoiceEvent, check_max_tokens, collected, unsupported
from app.serving.tool_calls import (
    ToolCallStream,
    ToolPlan,
    forced_calls,
    function_tool,
    parse_tool_calls,
    plan_function_tools,
)
from app.settings import ServerSettings
from engines.base import Accepted, Event, Finished, GenerationRequest, Message, TokenEvent
from engines.sampling import SamplingParams

log = logging.getLogger("slmserve.anthropic")

API = "anthropic_messages"
# Blocks of content these text-only models cannot read.
_MEDIA_BLOCKS = frozenset({"image", "document", "search_result", "container_upload"})


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def new_tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


# -- request -> generation -----------------------------------------------------------------


def _invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code="invalid_value")


def _refused_block(block: ContentBlock, where: str, allowed: str) -> OpenAIError:
    if block.type in _MEDIA_BLOCKS:
        return unsupported(
            f"{where}.type",
            f"{where}: content blocks of type {block.type!r} are not supported: slmserve serves "
            "text-only models.",
        )
    return unsupported(
        f"{where}.type", f"{where}: a block of type {block.type!r} cannot be used here ({allowed})."
    )


def _text(block: ContentBlock, where: str) -> str:
    if block.text is None:
        raise _invalid(f"{where}.text", "a text block needs 'text'.")
    return block.text


def _texts(blocks: list[ContentBlock], where: str, allowed: str) -> str:
    """Text blocks only (system prompts, tool results), joined like chat content parts."""
    texts = []
    for index, block in enumerate(blocks):
        if block.type != "text":
            raise _refused_block(block, f"{where}[{index}]", allowed)
        texts.append(_text(block, f"{where}[{index}]"))
    return "\n".join(texts)


def _tool_result(block: ContentBlock, where: str) -> Message:
    if not block.tool_use_id:
        raise _invalid(f"{where}.tool_use_id", "a tool_result block needs 'tool_use_id'.")
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = _texts(content, f"{where}.content", "a tool result holds text blocks")
    if block.is_error:
        text = f"Error: {text}"  # templates have no field for it; the model reads it here
    return Message(role="tool", content=text, tool_call_id=block.tool_use_id)


def _tool_call(block: ContentBlock, where: str) -> dict[str, Any]:
    """A tool_use block as the OpenAI tool call the prompt builders render."""
    if not block.id or not block.name:
        raise _invalid(where, "a tool_use block needs 'id' and 'name'.")
    function = {"name": block.name, "arguments": json.dumps(block.input or {})}
    return {"id": block.id, "type": "function", "function": function}


def _turn(message: MessageParam, index: int) -> list[Message]:
    """One Anthropic turn as engine messages: an assistant turn with its tool calls; a user
    turn's tool results as tool messages and its text as user messages, in their order."""
    if isinstance(message.content, str):
        return [Message(role=message.role, content=message.content)]
    where = f"messages[{index}].content"
    if message.role == "assistant":
        texts, calls = [], []
        for position, block in enumerate(message.content):
            if block.type == "text":
                texts.append(_text(block, f"{where}[{position}]"))
            elif block.type == "tool_use":
                calls.append(_tool_call(block, f"{where}[{position}]"))
            else:
                allowed = "an assistant turn holds text and tool_use blocks"
                raise _refused_block(block, f"{where}[{position}]", allowed)
        return [Message(role="assistant", content="\n".join(texts), tool_calls=tuple(calls))]
    messages: list[Message] = []
    pending: list[str] = []
    for position, block in enumerate(message.content):
        if block.type == "text":
            pending.append(_text(block, f"{where}[{position}]"))
        elif block.type == "tool_result":
            if pending:
                messages.append(Message(role="user", content="\n".join(pending)))
                pending = []
            messages.append(_tool_result(block, f"{where}[{position}]"))
        else:
            allowed = "a user turn holds text and tool_result blocks"
            raise _refused_block(block, f"{where}[{position}]", allowed)
    if pending or not messages:
        messages.append(Message(role="user", content="\n".join(pending)))
    return messages


def _engine_messages(body: MessagesBase) -> tuple[Message, ...]:
    messages: list[Message] = []
    if isinstance(body.system, str):
        messages.append(Message(role="system", content=body.system))
    elif body.system:
        system = _texts(body.system, "system", "a system prompt holds text blocks")
        messages.append(Message(role="system", content=system))
    for index, message in enumerate(body.messages):
        messages.extend(_turn(message, index))
    return tuple(messages)


def _tool_plan(body: MessagesBase) -> ToolPlan:
    definitions = []
    for index, tool in enumerate(body.tools or []):
        if tool.type not in (None, "custom"):
            raise unsupported(
                f"tools[{index}].type",
                f"tools[{index}]: server tools ({tool.type!r}) are not supported; define the "
                "tool with a name, a description and an input_schema and run it yourself.",
            )
        if tool.input_schema is None:
            raise _invalid(f"tools[{index}].input_schema", "a tool needs an 'input_schema'.")
        definitions.append(function_tool(tool.name, tool.description, tool.input_schema))
    choice = body.tool_choice
    if choice is None:
        return plan_function_tools(definitions, None)
    if choice.type in ("auto", "none"):
        return plan_function_tools(definitions, choice.type)
    if choice.type == "any":
        return plan_function_tools(definitions, "required")
    if not choice.name:
        raise _invalid("tool_choice.name", "a tool_choice of type 'tool' needs a 'name'.")
    return plan_function_tools(definitions, "named", choice.name)


def plan_messages(
    request_id: str, body: MessagesBase, settings: ServerSettings
) -> tuple[GenerationRequest, ToolPlan]:
    """The generation request of a /v1/messages body (or of a count_tokens body: its prompt)."""
    if body.thinking and body.thinking.get("type") not in (None, "disabled"):
        raise unsupported("thinking", "extended thinking is not supported by these models.")
    if len(body.messages) > settings.max_messages:
        raise OpenAIError(
            400,
            f"This server accepts at most {settings.max_messages} messages per request; "
            f"this one has {len(body.messages)}.",
            param="messages",
            code="too_many_messages",
        )
    tools = _tool_plan(body)
    request = GenerationRequest(
        request_id=request_id,
        messages=_engine_messages(body),
        max_tokens_ceiling=settings.max_tokens_cap,
        constraint=tools.constraint,
        tools=tools.tools,
    )
    if not isinstance(body, MessagesRequest):
        return request, tools
    check_max_tokens(body.max_tokens, "max_tokens", settings)
    sampling = SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
    stop = tuple(body.stop_sequences or ())
    return replace(request, max_tokens=body.max_tokens, stop=stop, sampling=sampling), tools


# -- engine events -> Anthropic ------------------------------------------------------------


def _usage(finished: Finished) -> AnthropicUsage:
    cached = finished.cached_prompt_tokens
    return AnthropicUsage(
        input_tokens=finished.prompt_tokens - cached,
        output_tokens=finished.completion_tokens,
        cache_read_input_tokens=cached,
    )


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as Anthropic's input object ({} when max_tokens cut them short)."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _event(name: str, payload: dict[str, Any]) -> bytes:
    """One SSE event as Anthropic frames it: its name, then its JSON (with the same type)."""
    return f"event: {name}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def anthropic_error_event(error: OpenAIError) -> bytes:
    return _event("error", anthropic_error_body(error))


ANTHROPIC_FRAMING = StreamFraming(error_event=anthropic_error_event, terminator=None)


@dataclass
class _MessageStream:
    """The content blocks of one streamed message: text, or tool calls, and what is held."""

    mode: Literal["content", "forced", "undecided", "held"]
    tools: ToolPlan
    calls: ToolCallStream = field(default_factory=ToolCallStream)
    held: str = ""
    blocks: int = 0  # blocks started so far
    open_block: bool = False
    called: bool = False
    sent: list[str] = field(default_factory=list)  # text sent, for the log

    def _start(self, block: dict[str, Any]) -> bytes:
        self.open_block = True
        self.blocks += 1
        content_block = {"type": "content_block_start", "index": self.blocks - 1}
        return _event("content_block_start", {**content_block, "content_block": block})

    def _stop(self) -> list[bytes]:
        if not self.open_block:
            return []
        self.open_block = False
        payload = {"type": "content_block_stop", "index": self.blocks - 1}
        return [_event("content_block_stop", payload)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}
        return _event("content_block_delta", payload)

    def _text(self, text: str) -> list[bytes]:
        if not text:
            return []
        rendered = [] if self.open_block else [self._start({"type": "text", "text": ""})]
        self.sent.append(text)
        rendered.append(self._delta({"type": "text_delta", "text": text}))
        return rendered

    def _tool_use(self, name: str) -> list[bytes]:
        self.called = True
        block = {"type": "tool_use", "id": new_tool_use_id(), "name": name, "input": {}}
        return [*self._stop(), self._start(block)]

    def _arguments(self, fragment: str) -> list[bytes]:
        if not fragment:
            return []
        return [self._delta({"type": "input_json_delta", "partial_json": fragment})]

    def _forced(self, text: str) -> list[bytes]:
        rendered = []
        for delta in self.calls.feed(text):
            function = delta.function
            if function is None:
                continue
            if function.name is not None:
                rendered += self._tool_use(function.name)
            rendered += self._arguments(function.arguments or "")
        return rendered

    def text(self, text: str) -> list[bytes]:
        """What a token's text becomes."""
        if self.mode == "forced":
            return self._forced(text)
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
        return self._text(text)

    def finish(self, finished: Finished) -> tuple[list[bytes], StopReason]:
        rendered = self.text(finished.text) if finished.text else []
        if self.mode == "forced" and finished.finish_reason == "length":
            # Cut off by max_tokens: still a tool call, its arguments as far as they got.
            for delta in self.calls.cut_off(self.tools.forced_name):
                if delta.function is not None and delta.function.name is not None:
                    rendered += self._tool_use(delta.function.name)
                elif delta.function is not None:
                    rendered += self._arguments(delta.function.arguments or "")
        if self.mode == "forced" and not self.called:
            rendered += self._text(self.calls.seen)  # never became a call: its text, as sent
        elif self.mode in ("held", "undecided") and self.held:
            held, self.held = self.held, ""
            stopped = finished.finish_reason == "stop"
            found = parse_tool_calls(held, self.tools.names) if stopped else []
            for call in found:
                rendered += self._tool_use(call.function.name)
                rendered += self._arguments(call.function.arguments)
            if not found:
                rendered += self._text(held)
        if not self.blocks:  # nothing at all: one empty text block, as the answer has
            rendered.append(self._start({"type": "text", "text": ""}))
        rendered += self._stop()
        return rendered, _stop_reason(finished, self.called)


def _stop_reason(finished: Finished, called: bool) -> StopReason:
    if finished.finish_reason == "length":
        return "max_tokens"
    if called:
        return "tool_use"
    # The engine names the stop string that ended the text; none: the model ended its turn.
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


# -- serving -------------------------------------------------------------------------------


class AnthropicServing:
    """Serves /v1/messages and /v1/messages/count_tokens on top of the serving core."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self._settings = core.settings

    def _log_finished(
        self, body: MessagesRequest, request_id: str, finished: Finished, text: str
    ) -> None:
        user = body.metadata.user_id if body.metadata else None
        messages = [message.model_dump(exclude_none=True) for message in body.messages]
        self._core.log_finished(request_id, body.model, user, finished, text, prompt=messages)

    async def create(self, body: MessagesRequest, raw_request: Request) -> Response:
        if unknown := body.unknown_fields():
            log.info("ignoring unknown request fields: %s", ", ".join(unknown))
        request_id = new_message_id()
        tracker = self._core.track(raw_request, body.model, API)
        generation, tools = plan_messages(request_id, body, self._settings)

        return await self._core.serve(
            raw_request,
            tracker,
            request_id=request_id,
            model=body.model,
            generations=[generation],
            choices_per_prompt=1,
            stream=body.stream,
            render_stream=lambda first, events: self._stream(
                body, request_id, generation, tools, first, events
            ),
            render_answer=lambda events: self._message(body, request_id, generation, tools, events),
            framing=ANTHROPIC_FRAMING,
        )

    async def count_tokens(self, body: CountTokensRequest, raw_request: Request) -> Response:
        """The prompt's tokens exactly as generation would see them, tools included."""
        if unknown := body.unknown_fields():
            log.info("ignoring unknown request fields: %s", ", ".join(unknown))
        generation, _ = plan_messages(f"count-{uuid.uuid4().hex}", body, self._settings)
        try:
            tokens = await until_disconnected(
                raw_request, self._core.pool.tokenize(body.model, generation)
            )
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        counted = CountTokensResponse(input_tokens=len(tokens))
        return Response(counted.model_dump_json(), media_type="application/json")

    async def _message(
        self,
        body: MessagesRequest,
        request_id: str,
        generation: GenerationRequest,
        tools: ToolPlan,
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> AnthropicMessage:
        text, finished = await collected(events)
        self._log_finished(body, request_id, finished, text)
        calls = []
        if tools.mode == "forced":
            calls = forced_calls(text, tools)
        elif tools.mode == "auto" and finished.finish_reason == "stop":
            calls = parse_tool_calls(text, tools.names)
        content: list[TextBlock | ToolUseBlock] = [
            ToolUseBlock(
                id=new_tool_use_id(),
                name=call.function.name,
                input=_tool_input(call.function.arguments),
            )
            for call in calls
        ]
        if not calls:
            content.append(TextBlock(text=text))
        stop_reason = _stop_reason(finished, bool(calls))
        return AnthropicMessage(
            id=request_id,
            model=body.model,
            content=content,
            stop_reason=stop_reason,
            stop_sequence=finished.stop_sequence if stop_reason == "stop_sequence" else None,
            usage=_usage(finished),
        )

    async def _stream(
        self,
        body: MessagesRequest,
        request_id: str,
        generation: GenerationRequest,
        tools: ToolPlan,
        first: list[ChoiceEvent],
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> AsyncIterator[bytes]:
        mode: Literal["content", "forced", "undecided"] = {
            "none": "content",
            "auto": "undecided",
            "forced": "forced",
        }[tools.mode]  # type: ignore[assignment]
        stream = _MessageStream(mode, tools)
        accepted = [event for _, event in first if isinstance(event, Accepted)]
        start = AnthropicMessage(
            id=request_id,
            model=body.model,
            content=[],
            stop_reason=None,
            usage=AnthropicUsage(input_tokens=accepted[0].prompt_tokens, output_tokens=0),
        )
        yield _event("message_start", {"type": "message_start", "message": start.model_dump()})
        yield _event("ping", {"type": "ping"})

        def render(event: Event) -> list[bytes]:
            if isinstance(event, TokenEvent):
                return stream.text(event.text)
            if not isinstance(event, Finished):
                return []
            rendered, stop_reason = stream.finish(event)
            self._log_finished(body, request_id, event, "".join(stream.sent))
            delta = {
                "stop_reason": stop_reason,
                "stop_sequence": event.stop_sequence if stop_reason == "stop_sequence" else None,
            }
            usage = _usage(event).model_dump()
            message_delta = {"type": "message_delta", "delta": delta, "usage": usage}
            rendered.append(_event("message_delta", message_delta))
            rendered.append(_event("message_stop", {"type": "message_stop"}))
            return rendered

        for _, event in first:
            for payload in render(event):
                yield payload
        async for _, event in events:
            for payload in render(event):
                yield payload
