"""OpenAI Responses API -> generation requests -> Response objects and typed event streams.

A thin adapter on the serving core, like chat completions: input items become chat messages
(`instructions` first, as a system message), function tools and `text.format` reuse the chat
path's tool planning and JSON-schema forcing, and the one event stream is rendered as a Response
object or as OpenAI's typed SSE events (`event: response.output_text.delta`, ...) numbered by
`sequence_number`.

State: with `store` (the default) a finished response is kept in the response store with its
input items, the whole conversation it continues (earlier turns, then this turn's input);
`previous_response_id` rebuilds that conversation and adds the new input, so a chain renders
the same prompt prefix turn after turn (and the GGUF engine's prefix cache skips its prefill).
`instructions` are not carried over, as OpenAI documents. A response that fails is not stored.

Truncation: `disabled` (the default) refuses a conversation that does not fit beside
`max_output_tokens` (400 context_length_exceeded); `auto` drops the oldest turns (a turn starts
at a user message; system and developer messages stay) until it fits, measured with the model's
own tokenizer, and stores what was kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.errors import OpenAIError
from app.protocol_responses import (
    INPUT_ITEM_MODELS,
    TEXT_PARTS,
    ContentPart,
    ConversationItem,
    FunctionCall,
    FunctionCallIn,
    FunctionCallOutput,
    FunctionToolIn,
    InputItemIn,
    InputItemList,
    InputMessage,
    InputText,
    MessageItemIn,
    OutputMessage,
    OutputText,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseObject,
)
from app.serving.core import ServingCore, StreamFraming
from app.serving.generation import check_max_tokens, collected, unsupported
from app.serving.responses_output import (
    Events,
    EventStream,
    Turn,
    new_id,
    output_items,
    status_of,
    usage_of,
)
from app.serving.tool_calls import (
    ToolPlan,
    function_tool,
    plan_function_tools,
)
from app.store import ResponseStore
from engines.base import Finished, GenerationRequest, JsonConstraint, Message
from engines.errors import ContextLengthExceededError
from engines.sampling import SamplingParams

log = logging.getLogger("slmserve.responses")

M = TypeVar("M", bound=BaseModel)

DEFAULT_PAGE = 20
MAX_PAGE = 100


def _not_found(response_id: str, param: str, code: str = "response_not_found") -> OpenAIError:
    subject = "Previous response" if param == "previous_response_id" else "Response"
    return OpenAIError(404, f"{subject} with id '{response_id}' not found.", param=param, code=code)


def _validated(model: type[M], raw: Any, location: tuple[str | int, ...]) -> M:
    """`raw` as `model`; a mismatch is a validation error at `location` in the body, answered
    like every other invalid field."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        errors = [{**e, "loc": ("body", *location, *e["loc"])} for e in error.errors()]
        raise RequestValidationError(errors) from None


# -- request -> generation -----------------------------------------------------------------


def _reject_unsupported_fields(body: ResponseCreateRequest) -> None:
    """Fields OpenAI defines that slmserve cannot honour: a clear 400, never an ignore."""
    if body.background:
        raise unsupported("background", "background responses are not supported.")
    if body.conversation is not None:
        raise unsupported(
            "conversation", "conversations are not supported; use previous_response_id."
        )
    if body.prompt is not None:
        raise unsupported("prompt", "prompt templates are not supported.")
    if body.reasoning and any(value is not None for value in body.reasoning.values()):
        raise unsupported("reasoning", "reasoning options are not supported by these models.")
    if body.top_logprobs:
        raise unsupported("top_logprobs", "log probabilities are not supported here yet.")
    included = [item for item in body.include or () if item == "message.output_text.logprobs"]
    if included:
        raise unsupported("include", "log probabilities are not supported here yet.")


def _function_tools(body: ResponseCreateRequest) -> list[FunctionToolIn]:
    tools = []
    for index, raw in enumerate(body.tools or ()):
        kind = raw.get("type") if isinstance(raw, dict) else None
        if isinstance(kind, str) and kind != "function":
            raise unsupported(
                f"tools[{index}].type",
                f"tools of type {kind!r} are not supported: slmserve runs function tools "
                "only (OpenAI's built-in tools run on OpenAI's servers).",
            )
        tools.append(_validated(FunctionToolIn, raw, ("tools", index)))
    return tools


def _tool_plan(body: ResponseCreateRequest, tools: list[FunctionToolIn]) -> ToolPlan:
    definitions = [function_tool(tool.name, tool.description, tool.parameters) for tool in tools]
    choice = body.tool_choice
    if choice is None or isinstance(choice, str):
        return plan_function_tools(definitions, choice)
    if choice.type != "function":
        raise unsupported(
            "tool_choice.type",
            f"a tool_choice of type {choice.type!r} is not supported: slmserve runs function "
            "tools only.",
        )
    if not choice.name:
        raise OpenAIError(
            400,
            "a tool_choice of type 'function' needs a 'name'.",
            param="tool_choice.name",
            code="invalid_value",
        )
    return plan_function_tools(definitions, "named", choice.name)


def _constraint(body: ResponseCreateRequest, tools: ToolPlan) -> JsonConstraint | None:
    format_ = body.text.format if body.text else None
    if format_ is None or format_.type == "text":
        return tools.constraint
    if tools.mode == "forced":
        raise OpenAIError(
            400,
            "text.format cannot be combined with a required or named tool_choice.",
            param="text.format",
            code="invalid_value",
        )
    if format_.type == "json_object":
        return JsonConstraint(param="text.format")
    if format_.name is None or format_.json_schema is None:
        raise OpenAIError(
            400,
            "text.format of type json_schema needs a 'name' and a 'schema'.",
            param="text.format",
            code="invalid_value",
        )
    return JsonConstraint(json.dumps(format_.json_schema), param="text.format")


def _texts(content: str | list[ContentPart], where: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts = []
    for index, part in enumerate(content):
        if part.type not in TEXT_PARTS or part.text is None:
            raise unsupported(
                f"{where}[{index}]",
                f"content parts of type {part.type!r} are not supported: slmserve serves "
                "text-only models.",
            )
        texts.append(part.text)
    return texts


def _conversation_item(item: InputItemIn, where: str) -> ConversationItem:
    """An input item as it is stored and listed: with an id, a status and text parts."""
    if isinstance(item, MessageItemIn):
        texts = _texts(item.content, f"{where}.content")
        if item.role == "assistant":
            return OutputMessage(
                id=item.id or new_id("msg"),
                status=item.status or "completed",
                content=[OutputText(text=text) for text in texts],
            )
        return InputMessage(
            id=item.id or new_id("msg"),
            role=item.role,
            content=[InputText(text=text) for text in texts],
        )
    if isinstance(item, FunctionCallIn):
        return FunctionCall(
            id=item.id or new_id("fc"),
            call_id=item.call_id,
            name=item.name,
            arguments=item.arguments,
            status=item.status or "completed",
        )
    return FunctionCallOutput(
        id=item.id or new_id("fco"),
        call_id=item.call_id,
        output="\n".join(_texts(item.output, f"{where}.output")),
    )


def _parsed_items(raw_items: Sequence[Any], field_name: str) -> list[ConversationItem]:
    items = []
    for index, raw in enumerate(raw_items):
        kind = (raw.get("type") or "message") if isinstance(raw, dict) else None
        if isinstance(kind, str) and kind not in INPUT_ITEM_MODELS:
            raise unsupported(
                f"{field_name}[{index}].type",
                f"input items of type {kind!r} are not supported: slmserve takes messages, "
                "function_call and function_call_output items.",
            )
        model = INPUT_ITEM_MODELS[kind] if isinstance(kind, str) else MessageItemIn
        parsed = _validated(model, raw, (field_name, index))
        items.append(_conversation_item(parsed, f"{field_name}[{index}]"))
    return items


def _engine_messages(items: Sequence[ConversationItem]) -> list[Message]:
    messages: list[Message] = []
    for item in items:
        if isinstance(item, InputMessage):
            # "developer" is OpenAI's newer name for "system"; model templates know "system".
            role = "system" if item.role == "developer" else item.role
            messages.append(Message(role, "\n".join(part.text for part in item.content)))
        elif isinstance(item, OutputMessage):
            messages.append(Message("assistant", "\n".join(part.text for part in item.content)))
        elif isinstance(item, FunctionCall):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if messages and messages[-1].role == "assistant":
                # Calls made together (or after some text) are one assistant turn.
                last = messages[-1]
                messages[-1] = replace(last, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(Message("assistant", "", tool_calls=(call,)))
        else:
            messages.append(Message("tool", item.output, tool_call_id=item.call_id))
    return messages


def _check_call_outputs(items: Sequence[ConversationItem], first_new: int) -> None:
    """Every function_call_output answers a function_call that came before it."""
    calls: set[str] = set()
    for index, item in enumerate(items):
        if isinstance(item, FunctionCall):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutput) and item.call_id not in calls:
            raise OpenAIError(
                400,
                f"No function call found for the function_call_output with call_id "
                f"{item.call_id!r}.",
                param=f"input[{index - first_new}].call_id",
                code="invalid_value",
            )


def _turn_numbers(items: Sequence[ConversationItem]) -> list[int | None]:
    """Each item's turn (a turn starts at a user message); None for the system and developer
    messages, which truncation keeps."""
    numbers: list[int | None] = []
    users = 0
    for item in items:
        if isinstance(item, InputMessage) and item.role in ("system", "developer"):
            numbers.append(None)
            continue
        if isinstance(item, InputMessage) and item.role == "user":
            users += 1
        numbers.append(max(users - 1, 0))
    return numbers


def _echo(body: ResponseCreateRequest, tools: list[FunctionToolIn]) -> dict[str, Any]:
    """The request fields every Response object repeats."""
    format_ = body.text.format if body.text else None
    choice = body.tool_choice
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "model": body.model,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "store": body.store,
        "temperature": body.temperature,
        "text": {
            "format": (
                format_.model_dump(by_alias=True, exclude_none=True)
                if format_
                else {"type": "text"}
            )
        },
        "tool_choice": (
            choice.model_dump(exclude_none=True)
            if choice is not None and not isinstance(choice, str)
            else choice or "auto"
        ),
        "tools": [tool.model_dump() for tool in tools],
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "user": body.user,
    }


# -- serving -------------------------------------------------------------------------------


class ResponsesServing:
    """Serves /v1/responses on top of the serving core, keeping state in the response store."""

    def __init__(self, core: ServingCore, store: ResponseStore) -> None:
        self._core = core
        self._settings = core.settings
        self._store = store

    # -- create

    async def create(self, body: ResponseCreateRequest, raw_request: Request) -> Response:
        if unknown := body.unknown_fields():
            log.info("ignoring unknown request fields: %s", ", ".join(unknown))
        tracker = self._core.track(raw_request, body.model, "responses")
        turn = await self._plan(body)
        stream = EventStream(turn, self._keep)

        try:
            return await self._core.serve(
                raw_request,
                tracker,
                request_id=turn.response_id,
                model=body.model,
                generations=[turn.generation],
                choices_per_prompt=1,
                stream=body.stream,
                render_stream=stream.render,
                render_answer=lambda events: self._complete(turn, events),
                framing=StreamFraming(error_event=stream.failed, terminator=None),
            )
        except ContextLengthExceededError as error:
            error.param = "input"
            raise

    async def _plan(self, body: ResponseCreateRequest) -> Turn:
        _reject_unsupported_fields(body)
        check_max_tokens(body.max_output_tokens, "max_output_tokens", self._settings)
        raw_input = (
            [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
        )
        if len(raw_input) > self._settings.max_messages:
            raise OpenAIError(
                400,
                f"This server accepts at most {self._settings.max_messages} input items per "
                f"request; this one has {len(raw_input)}.",
                param="input",
                code="too_many_messages",
            )
        tools = _function_tools(body)
        plan = _tool_plan(body, tools)
        constraint = _constraint(body, plan)
        earlier = await self._continued(body.previous_response_id)
        items = earlier + _parsed_items(raw_input, "input")
        _check_call_outputs(items, len(earlier))
        if not items:
            raise OpenAIError(400, "'input' has no items.", param="input", code="invalid_value")
        response_id = new_id("resp")
        generation = GenerationRequest(
            request_id=response_id,
            messages=self._messages(body, items),
            max_tokens=body.max_output_tokens,
            max_tokens_ceiling=self._settings.max_tokens_cap,
            sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p),
            constraint=constraint,
            tools=plan.tools,
        )
        if body.truncation == "auto":
            generation, items = await self._fit(body, generation, items)
        return Turn(
            response_id, int(time.time()), body, generation, plan, items, _echo(body, tools)
        )

    @staticmethod
    def _messages(
        body: ResponseCreateRequest, items: Sequence[ConversationItem]
    ) -> tuple[Message, ...]:
        instructions = [Message("system", body.instructions)] if body.instructions else []
        return (*instructions, *_engine_messages(items))

    async def _continued(self, previous_response_id: str | None) -> list[ConversationItem]:
        """The conversation a previous response continues: its input items, then its output."""
        if previous_response_id is None:
            return []
        previous = await self._store.get(previous_response_id)
        earlier = await self._store.input_items(previous_response_id)
        if previous is None or earlier is None:
            raise _not_found(
                previous_response_id, "previous_response_id", "previous_response_not_found"
            )
        return _parsed_items([*earlier, *previous["output"]], "previous_response_id")

    async def _fit(
        self,
        body: ResponseCreateRequest,
        generation: GenerationRequest,
        items: list[ConversationItem],
    ) -> tuple[GenerationRequest, list[ConversationItem]]:
        """truncation=auto: without the fewest oldest turns that make the prompt fit."""
        pool = self._core.pool
        turns = _turn_numbers(items)

        def kept(dropped: int) -> list[ConversationItem]:
            return [
                item
                for item, turn in zip(items, turns, strict=True)
                if turn is None or turn >= dropped
            ]

        async def fits(dropped: int) -> GenerationRequest | None:
            candidate = replace(generation, messages=self._messages(body, kept(dropped)))
            prompt = len(await pool.tokenize(body.model, candidate))
            context = pool.status(body.model).context_length
            room = (generation.max_tokens or 1) + prompt
            return candidate if context is None or room <= context else None

        if (whole := await fits(0)) is not None:
            return whole, items
        last = max((turn for turn in turns if turn is not None), default=0)
        best = await fits(last)
        if best is None:
            raise OpenAIError(
                400,
                "The input does not fit the model's context, even without the earlier turns; "
                "shorten the last turn or the instructions, or lower max_output_tokens.",
                param="input",
                code="context_length_exceeded",
            )
        low, high = 0, last  # the prompt does not fit without `low` turns, fits without `high`
        while high - low > 1:
            middle = (low + high) // 2
            if (candidate := await fits(middle)) is not None:
                high, best = middle, candidate
            else:
                low = middle
        log.info("%s: truncation dropped the %d oldest turns", generation.request_id, high)
        return best, kept(high)

    async def _complete(self, turn: Turn, events: Events) -> ResponseObject:
        text, finished = await collected(events)
        output = output_items(turn, text, finished)
        response = turn.response(status_of(finished), output, usage_of(finished))
        await self._keep(turn, response, finished)
        return response

    async def _keep(self, turn: Turn, response: ResponseObject, finished: Finished) -> None:
        """Log the finished response and store it (when asked to)."""
        log.info(
            "%s model=%s user=%s prompt_tokens=%d cached=%d completion_tokens=%d finish=%s "
            "ttft=%.3fs generation=%.3fs stored=%s",
            turn.response_id,
            turn.body.model,
            turn.body.user or "-",
            finished.prompt_tokens,
            finished.cached_prompt_tokens,
            finished.completion_tokens,
            finished.finish_reason,
            finished.time_to_first_token_s,
            finished.generation_s,
            turn.body.store,
        )
        if self._settings.log_prompts:
            log.info(
                "%s input=%s output=%s",
                turn.response_id,
                [item.model_dump() for item in turn.items],
                [item.model_dump() for item in response.output],
            )
        if turn.body.store:
            items = [item.model_dump(mode="json") for item in turn.items]
            await self._store.put(response.model_dump(mode="json"), items)

    # -- stored responses

    async def retrieve(self, response_id: str, *, stream: bool = False) -> Response:
        if stream:
            raise unsupported("stream", "replaying a stored response as events is not supported.")
        stored = await self._store.get(response_id)
        if stored is None:
            raise _not_found(response_id, "response_id")
        return Response(json.dumps(stored), media_type="application/json")

    async def delete(self, response_id: str) -> Response:
        if not await self._store.delete(response_id):
            raise _not_found(response_id, "response_id")
        deleted = ResponseDeleted(id=response_id)
        return Response(deleted.model_dump_json(), media_type="application/json")

    async def input_items(
        self, response_id: str, *, limit: int | None, order: str | None, after: str | None
    ) -> Response:
        if limit is not None and not 1 <= limit <= MAX_PAGE:
            raise OpenAIError(
                400,
                f"'limit' must be between 1 and {MAX_PAGE}; got {limit}.",
                param="limit",
                code="invalid_value",
            )
        if order not in (None, "asc", "desc"):
            raise OpenAIError(
                400, "'order' must be 'asc' or 'desc'.", param="order", code="invalid_value"
            )
        items = await self._store.input_items(response_id)
        if items is None:
            raise _not_found(response_id, "response_id")
        if order != "asc":  # OpenAI lists the newest first by default
            items = items[::-1]
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise OpenAIError(
                    400,
                    f"No input item with id '{after}' in response '{response_id}'.",
                    param="after",
                    code="invalid_value",
                )
            items = items[ids.index(after) + 1 :]
        page = items[: limit or DEFAULT_PAGE]
        listing = InputItemList(
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=len(items) > len(page),
        )
        return Response(listing.model_dump_json(), media_type="application/json")
