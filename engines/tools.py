"""Tool calling for chat templates that know nothing of tools: the documented fallback.

A template that renders `tools` itself (Hermes, Qwen and similar) gets the tool definitions and
the tool turns as they are. For any other template the conversation is rewritten before
rendering: a system instruction lists the functions and the one answer format the server
understands, `{"name": ..., "arguments": {...}}`; earlier calls become that JSON in the
assistant's turn, and tool results become user turns naming the call they answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from engines.base import Message

INSTRUCTION = (
    "You can call functions. To call one, answer with exactly one JSON object of the form "
    '{"name": "<function name>", "arguments": {<arguments>}} and nothing else. '
    "Otherwise answer normally. Available functions:"
)


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function", {})
    return {key: function[key] for key in ("name", "description", "parameters") if key in function}


def tool_instruction(tools: Sequence[dict[str, Any]]) -> str:
    return "\n".join([INSTRUCTION, *(json.dumps(_function(tool)) for tool in tools)])


def _arguments(call: dict[str, Any]) -> Any:
    """OpenAI sends arguments as a JSON string; templates and the fallback want the object."""
    raw = call.get("function", {}).get("arguments", "{}")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw


def call_as_json(call: dict[str, Any]) -> str:
    return json.dumps({"name": call.get("function", {}).get("name"), "arguments": _arguments(call)})


def with_tool_fallback(
    messages: Sequence[Message], tools: Sequence[dict[str, Any]]
) -> list[Message]:
    """The conversation rewritten for a template without tool support."""
    names = {
        call.get("id"): call.get("function", {}).get("name")
        for message in messages
        for call in message.tool_calls
    }
    rewritten: list[Message] = []
    for message in messages:
        if message.tool_calls:
            calls = "\n".join(call_as_json(call) for call in message.tool_calls)
            content = f"{message.content}\n{calls}" if message.content else calls
            rewritten.append(Message("assistant", content))
        elif message.role == "tool":
            name = names.get(message.tool_call_id, "a function")
            rewritten.append(
                Message(
                    "user", f"Result of {name} (call {message.tool_call_id}):\n{message.content}"
                )
            )
        else:
            rewritten.append(message)
    if tools:
        instruction = tool_instruction(tools)
        if rewritten and rewritten[0].role == "system":
            first = rewritten[0]
            rewritten[0] = replace(first, content=f"{first.content}\n\n{instruction}")
        else:
            rewritten.insert(0, Message("system", instruction))
    return rewritten


def template_message(message: Message) -> dict[str, Any]:
    """A message as chat templates with tool support expect it (arguments as objects)."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        data["name"] = message.name
    if message.tool_calls:
        data["tool_calls"] = [
            {**call, "function": {**call.get("function", {}), "arguments": _arguments(call)}}
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data
