"""Responses API output: the Response object of a planned request, its output items, and the
typed event stream that renders one generation.

Output items follow the chat path's rules (app/serving/tool_calls.py): a forced call streams
as it is generated (`response.output_item.added` with the name, then argument deltas); with
tool_choice "auto" an answer that starts like a call is held to the end, then sent as calls or
as text. Every event is typed (`event:` named like its `type`) and numbered (`sequence_number`
from 0); the last one carries the final Response object, the one that is stored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import OpenAIError
from app.protocol import ToolCallDelta
from app.protocol_responses import (
    ConversationItem,
    FunctionCall,
    IncompleteDetails,
    InputTokensDetails,
    ItemStatus,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseCreateRequest,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)
from app.serving.generation import ChoiceEvent
from app.serving.tool_calls import ToolCallStream, ToolPlan, forced_calls, parse_tool_calls
from engines.base import Event, Finished, GenerationRequest, TokenEvent

Events = AsyncGenerator[ChoiceEvent, None]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Turn:
    """One planned /v1/responses request."""

    response_id: str
    created_at: int
    body: ResponseCreateRequest
    generation: GenerationRequest
    tools: ToolPlan
    # The conversation this response continues, stored as its input items.
    items: list[ConversationItem]
    echo: dict[str, Any]

    def response(
        self,
        status: ResponseStatus,
        output: list[OutputItem],
        usage: ResponseUsage | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        return ResponseObject(
            id=self.response_id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            error=error,
            incomplete_details=(
                IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
            ),
            output=output,
            usage=usage,
            **self.echo,
        )

    @property
    def parallel_tool_calls(self) -> bool:
        return self.body.parallel_tool_calls is not False


def usage_of(finished: Finished) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=finished.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=finished.cached_prompt_tokens),
        output_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )


def output_message(text: str, status: ItemStatus, item_id: str | None = None) -> OutputMessage:
    return OutputMessage(
        id=item_id or new_id("msg"), status=status, content=[OutputText(text=text)]
    )


def output_items(turn: Turn, text: str, finished: Finished) -> list[OutputItem]:
    """The output items of a whole (non-streamed) answer."""
    tools = turn.tools
    calls = []
    if tools.mode == "forced":
        calls = forced_calls(text, tools)
    elif tools.mode == "auto" and finished.finish_reason == "stop":
        calls = parse_tool_calls(text, tools.names)
    if not turn.parallel_tool_calls:
        calls = calls[:1]
    status: ItemStatus = "incomplete" if finished.finish_reason == "length" else "completed"
    if not calls:
        return [output_message(text, status)]
    return [
        FunctionCall(
            id=new_id("fc"),
            call_id=call.id,
            name=call.function.name,
            arguments=call.function.arguments,
            status=status,
        )
        for call in calls
    ]


def status_of(finished: Finished) -> ResponseStatus:
    return "incomplete" if finished.finish_reason == "length" else "completed"


def failure_code(error: OpenAIError) -> str:
    """OpenAI's codes for a failed response."""
    if error.status_code == 429:
        return "rate_limit_exceeded"
    if error.status_code < 500:
        return "invalid_prompt"
    return "server_error"


# -- streaming -----------------------------------------------------------------------------


def _sse(payload: dict[str, Any]) -> bytes:
    """One typed SSE event, named like its type, as OpenAI frames them."""
    data = json.dumps(payload, ensure_ascii=False)
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


@dataclass
class _OpenItem:
    """The output item being streamed: a message or a function call."""

    index: int
    item_id: str
    call_id: str | None = None
    name: str | None = None
    text: list[str] = field(default_factory=list)


StreamMode = Literal["content", "forced", "undecided", "held"]
# Logs a finished response and stores it when asked to.
Keep = Callable[[Turn, ResponseObject, Finished], Awaitable[None]]


class EventStream:
    """Renders one response's events: typed, numbered, each output item opened and closed."""

    def __init__(self, turn: Turn, keep: Keep) -> None:
        self._turn = turn
        self._keep = keep
        self._sequence = 0
        self._output: list[OutputItem] = []
        self._open: _OpenItem | None = None
        modes: dict[str, StreamMode] = {"none": "content", "auto": "undecided", "forced": "forced"}
        self._mode = modes[turn.tools.mode]
        self._calls = ToolCallStream()
        self._held = ""
        self.finished: Finished | None = None

    def _event(self, type_: str, **fields: Any) -> bytes:
        payload = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return _sse(payload)

    def _response_event(self, type_: str, response: ResponseObject) -> bytes:
        return self._event(type_, response=response.model_dump(mode="json"))

    # -- messages

    def _openoutput_message(self) -> list[bytes]:
        item = self._open = _OpenItem(len(self._output), new_id("msg"))
        empty = OutputMessage(id=item.item_id, status="in_progress", content=[])
        return [
            self._event(
                "response.output_item.added",
                output_index=item.index,
                item=empty.model_dump(mode="json"),
            ),
            self._event(
                "response.content_part.added",
                item_id=item.item_id,
                output_index=item.index,
                content_index=0,
                part=OutputText(text="").model_dump(mode="json"),
            ),
        ]

    def _message_text(self, text: str) -> list[bytes]:
        rendered = []
        if self._open is None:
            if not text:
                return []
            rendered += self._openoutput_message()
        item = self._open
        assert item is not None
        assert item.call_id is None
        if text:
            item.text.append(text)
            rendered.append(
                self._event(
                    "response.output_text.delta",
                    item_id=item.item_id,
                    output_index=item.index,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        return rendered

    def _closeoutput_message(self, status: ItemStatus) -> list[bytes]:
        rendered = [] if self._open is not None else self._openoutput_message()
        item = self._open
        assert item is not None
        text = "".join(item.text)
        message = output_message(text, status, item.item_id)
        self._output.append(message)
        self._open = None
        return [
            *rendered,
            self._event(
                "response.output_text.done",
                item_id=item.item_id,
                output_index=item.index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self._event(
                "response.content_part.done",
                item_id=item.item_id,
                output_index=item.index,
                content_index=0,
                part=message.content[0].model_dump(mode="json"),
            ),
            self._event(
                "response.output_item.done",
                output_index=item.index,
                item=message.model_dump(mode="json"),
            ),
        ]

    # -- function calls

    def _open_call(self, call_id: str, name: str) -> bytes:
        item = self._open = _OpenItem(len(self._output), new_id("fc"), call_id, name)
        call = FunctionCall(
            id=item.item_id, call_id=call_id, name=name, arguments="", status="in_progress"
        )
        return self._event(
            "response.output_item.added", output_index=item.index, item=call.model_dump()
        )

    def _arguments(self, arguments: str) -> list[bytes]:
        item = self._open
        assert item is not None
        assert item.call_id is not None
        if not arguments:
            return []
        item.text.append(arguments)
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=item.item_id,
                output_index=item.index,
                delta=arguments,
            )
        ]

    def _close_call(self, status: ItemStatus) -> list[bytes]:
        item = self._open
        assert item is not None
        assert item.call_id is not None
        assert item.name is not None
        arguments = "".join(item.text)
        call = FunctionCall(
            id=item.item_id,
            call_id=item.call_id,
            name=item.name,
            arguments=arguments,
            status=status,
        )
        self._output.append(call)
        self._open = None
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item.item_id,
                output_index=item.index,
                name=item.name,
                arguments=arguments,
            ),
            self._event(
                "response.output_item.done", output_index=item.index, item=call.model_dump()
            ),
        ]

    def _forced_delta(self, delta: ToolCallDelta) -> list[bytes]:
        function = delta.function
        if delta.id is not None and function is not None and function.name is not None:
            return [self._open_call(delta.id, function.name)]
        if function is not None and function.arguments:
            return self._arguments(function.arguments)
        return []

    def _forced(self, text: str) -> list[bytes]:
        return [
            payload for delta in self._calls.feed(text) for payload in self._forced_delta(delta)
        ]

    # -- tokens

    def _text(self, text: str) -> list[bytes]:
        if self._mode == "forced":
            return self._forced(text)
        if self._mode in ("undecided", "held"):
            self._held += text
            if self._mode == "held":
                return []
            start = self._held.lstrip()[:1]
            if not start:
                return []
            # With tool_choice "auto" an answer that starts like a call is held to the end.
            self._mode = "held" if start in "{<" else "content"
            if self._mode == "held":
                return []
            text, self._held = self._held, ""
        return self._message_text(text)

    def _finish(self, finished: Finished) -> list[bytes]:
        rendered = self._text(finished.text)
        status: ItemStatus = "incomplete" if finished.finish_reason == "length" else "completed"
        if self._mode == "forced":
            if finished.finish_reason == "length":
                # Cut off: still a call, its arguments as far as they got.
                for delta in self._calls.cut_off(self._turn.tools.forced_name):
                    rendered += self._forced_delta(delta)
            if self._open is not None:
                return rendered + self._close_call(status)
            # No call came out at all: the text is the answer.
            rendered += self._message_text(self._calls.seen)
        elif self._mode in ("held", "undecided") and self._held:
            held, self._held = self._held, ""
            stop = finished.finish_reason == "stop"
            calls = parse_tool_calls(held, self._turn.tools.names) if stop else []
            if not self._turn.parallel_tool_calls:
                calls = calls[:1]
            for call in calls:
                rendered.append(self._open_call(call.id, call.function.name))
                rendered += self._arguments(call.function.arguments)
                rendered += self._close_call(status)
            if calls:
                return rendered
            rendered += self._message_text(held)
        return rendered + self._closeoutput_message(status)

    def _on(self, event: Event) -> list[bytes]:
        if isinstance(event, TokenEvent):
            return self._text(event.text)
        if isinstance(event, Finished):
            self.finished = event
            return self._finish(event)
        return []

    async def render(self, first: list[ChoiceEvent], events: Events) -> AsyncIterator[bytes]:
        started = self._turn.response("in_progress", [])
        yield self._response_event("response.created", started)
        yield self._response_event("response.in_progress", started)
        for _, event in first:
            for payload in self._on(event):
                yield payload
        async for _, event in events:
            for payload in self._on(event):
                yield payload
        finished = self.finished
        assert finished is not None, "the pool ends every request with Finished or an error"
        status = status_of(finished)
        response = self._turn.response(status, self._output, usage_of(finished))
        await self._keep(self._turn, response, finished)
        yield self._response_event(f"response.{status}", response)

    def failed(self, error: OpenAIError) -> bytes:
        """`response.failed`, with what was finished before the error."""
        failure = ResponseError(code=failure_code(error), message=error.detail.message)
        response = self._turn.response("failed", self._output, error=failure)
        return self._response_event("response.failed", response)
