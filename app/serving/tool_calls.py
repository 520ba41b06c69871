"""Tool calls: what the model is asked for, and how its output becomes `tool_calls`.

The output format is one JSON object, `{"name": ..., "arguments": {...}}` (what the fallback
instruction asks for, and what `tool_choice` "required" or a named function enforces with a JSON
schema), or Hermes-style `<tool_call>{...}</tool_call>` blocks (what chat templates with their
own tool support teach). With `tool_choice` "auto" the model may also just answer in text.

Streaming: a forced call is streamed as it is generated (id and name first, then argument
fragments, as OpenAI streams them). With "auto", a stream that starts like a call (`{` or `<`)
is held until the end and then sent as a call, or as text if it was not one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import OpenAIError
from app.protocol import (
    ChatCompletionRequest,
    FunctionCall,
    FunctionDelta,
    ToolCall,
    ToolCallDelta,
)
from engines.base import JsonConstraint

ToolMode = Literal["none", "auto", "forced"]
_CALL_HEADER = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_HELD_TAIL = re.compile(r"\}?\s*$")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_DEFINITIONS = ("$defs", "definitions")


def _renamed_refs(schema: Any, renames: dict[str, str]) -> Any:
    if isinstance(schema, list):
        return [_renamed_refs(item, renames) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: renames.get(value, value) if key == "$ref" else _renamed_refs(value, renames)
        for key, value in schema.items()
    }


def _call_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The schema of one call, `{"name": <name>, "arguments": <parameters>}`.

    The parameters' `$defs` (pydantic writes nested models there) move to the root, where their
    `#/$defs/...` references point; they are prefixed with the function's name so that several
    tools' definitions never collide."""
    arguments = dict(parameters or {"type": "object"})
    definitions: dict[str, Any] = {}
    renames: dict[str, str] = {}
    for keyword in _DEFINITIONS:
        for key, definition in (arguments.pop(keyword, None) or {}).items():
            renamed = f"{name}.{key}"
            definitions[renamed] = definition
            renames[f"#/{keyword}/{key}"] = f"#/$defs/{renamed}"
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "name": {"const": name},
            "arguments": _renamed_refs(arguments, renames),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    if definitions:
        schema["$defs"] = _renamed_refs(definitions, renames)
    return schema


def _forced_schema(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    """One call schema, or any of several (their definitions gathered at the root)."""
    if len(schemas) == 1:
        return schemas[0]
    definitions: dict[str, Any] = {}
    branches = []
    for schema in schemas:
        definitions.update(schema.get("$defs", {}))
        branches.append({key: value for key, value in schema.items() if key != "$defs"})
    combined: dict[str, Any] = {"anyOf": branches}
    if definitions:
        combined["$defs"] = definitions
    return combined


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request asks of tools."""

    mode: ToolMode
    tools: tuple[dict[str, Any], ...] = ()
    names: frozenset[str] = frozenset()
    constraint: JsonConstraint | None = None
    # The one function a forced call can name (a named tool_choice, or a single tool).
    forced_name: str | None = None


def function_tool(
    name: str, description: str | None, parameters: dict[str, Any] | None
) -> dict[str, Any]:
    """An OpenAI tool definition (what chat templates and the fallback instruction render),
    for APIs whose tools come in another shape (Anthropic's name, description, input_schema)."""
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def plan_tools(body: ChatCompletionRequest) -> ToolPlan:
    definitions = tuple(tool.model_dump(exclude_none=True) for tool in body.tools or [])
    choice = body.tool_choice
    if choice is None or isinstance(choice, str):
        return plan_function_tools(definitions, choice)
    return plan_function_tools(definitions, "named", choice.function.name)


ToolChoiceMode = Literal["none", "auto", "required", "named"]


def plan_function_tools(
    definitions: Sequence[dict[str, Any]], choice: ToolChoiceMode | None, name: str | None = None
) -> ToolPlan:
    """What any API's function tools ask of the model: `definitions` as OpenAI tool definitions
    (see `function_tool`), `choice` as chat's tool_choice, "named" forcing the function `name`."""
    if not definitions:
        if choice not in (None, "none"):
            raise OpenAIError(
                400, "tool_choice needs tools.", param="tool_choice", code="invalid_value"
            )
        return ToolPlan("none")
    if choice == "none":
        return ToolPlan("none")
    functions = [definition["function"] for definition in definitions]
    names = frozenset(function["name"] for function in functions)
    schemas = {function["name"]: _call_schema(function["name"], function.get("parameters"))
               for function in functions}  # fmt: skip
    if choice in (None, "auto"):
        return ToolPlan("auto", tuple(definitions), names)
    if choice == "required":
        forced_name = next(iter(names)) if len(names) == 1 else None
        schema = _forced_schema(list(schemas.values()))
    else:
        if name not in names:
            raise OpenAIError(
                400,
                f"tool_choice names {name!r}, which is not among the tools.",
                param="tool_choice",
                code="invalid_value",
            )
        forced_name = name
        schema = schemas[forced_name]
    return ToolPlan(
        "forced",
        tuple(definitions),
        names,
        JsonConstraint(json.dumps(schema), param="tools"),
        forced_name,
    )


def _call_from(data: Any, names: frozenset[str]) -> ToolCall | None:
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(
        id=new_call_id(), function=FunctionCall(name=data["name"], arguments=json.dumps(arguments))
    )


def parse_tool_calls(text: str, names: frozenset[str]) -> list[ToolCall]:
    """The calls in a finished output (none: it was an ordinary answer)."""
    try:
        call = _call_from(json.loads(text), names)
    except ValueError:
        call = None
    if call is not None:
        return [call]
    calls = []
    for block in _HERMES_CALL.findall(text):
        try:
            found = _call_from(json.loads(block), names)
        except ValueError:
            return []
        if found is None:
            return []
        calls.append(found)
    return calls


def forced_calls(text: str, plan: ToolPlan) -> list[ToolCall]:
    """The call in the output of a forced tool call, also when max_tokens cut it off: then its
    arguments are the JSON generated so far (finish_reason "length" tells the client)."""
    if calls := parse_tool_calls(text, plan.names):
        return calls
    stream = ToolCallStream()
    deltas = stream.feed(text) + stream.cut_off(plan.forced_name)
    if not deltas or deltas[0].function is None or deltas[0].function.name is None:
        return []
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function is not None)
    name = deltas[0].function.name
    return [ToolCall(id=stream.call_id, function=FunctionCall(name=name, arguments=arguments))]


@dataclass
class ToolCallStream:
    """Turns the text of one forced call, as it arrives, into OpenAI tool-call deltas."""

    buffer: str = ""
    header_sent: bool = False
    held: str = ""  # a possible closing brace of the outer object, and trailing space
    call_id: str = field(default_factory=new_call_id)
    seen: str = ""  # everything fed, to tell a complete call from a cut-off one
    arguments_sent: bool = False

    def cut_off(self, forced_name: str | None) -> list[ToolCallDelta]:
        """What is left to send when generation stopped early (max_tokens): the header, if
        its name never completed but only one function can be meant, and the held tail,
        which belongs to the arguments unless the call is complete."""
        deltas: list[ToolCallDelta] = []
        if not self.header_sent:
            if forced_name is None:
                return deltas
            self.header_sent = True
            deltas.append(self._header(forced_name))
        try:
            json.loads(self.seen)
        except ValueError:
            if self.held:
                deltas.append(ToolCallDelta(index=0, function=FunctionDelta(arguments=self.held)))
        self.held = ""
        return deltas

    def _header(self, name: str) -> ToolCallDelta:
        return ToolCallDelta(
            index=0,
            id=self.call_id,
            type="function",
            function=FunctionDelta(name=name, arguments=""),
        )

    def feed(self, text: str) -> list[ToolCallDelta]:
        self.seen += text
        deltas: list[ToolCallDelta] = []
        if not self.header_sent:
            self.buffer += text
            match = _CALL_HEADER.match(self.buffer)
            if match is None:
                return deltas
            deltas.append(self._header(json.loads(f'"{match.group(1)}"')))
            self.header_sent = True
            text = self.buffer[match.end() :]
        pending = self.held + text
        if not self.arguments_sent:
            pending = pending.lstrip()  # the space after "arguments": is no part of them
        tail = _HELD_TAIL.search(pending)
        cut = tail.start() if tail else len(pending)
        self.held = pending[cut:]
        if pending[:cut]:
            self.arguments_sent = True
            deltas.append(ToolCallDelta(index=0, function=FunctionDelta(arguments=pending[:cut])))
        return deltas

    @property
    def started(self) -> bool:
        return self.header_sent


def tool_call_deltas(calls: list[ToolCall]) -> list[ToolCallDelta]:
    """Finished calls as stream deltas (a header, then all the arguments in one fragment)."""
    deltas = []
    for index, call in enumerate(calls):
        deltas.append(
            ToolCallDelta(
                index=index,
                id=call.id,
                type="function",
                function=FunctionDelta(name=call.function.name, arguments=""),
            )
        )
        deltas.append(
            ToolCallDelta(index=index, function=FunctionDelta(arguments=call.function.arguments))
        )
    return deltas
