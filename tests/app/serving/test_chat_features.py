"""Tools, n > 1 and logprobs over the fake engine: the exact OpenAI shapes."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.app.conftest import FAKE_MODEL, FakeServer
from tests.fakes import SAY
from tests.sse import sse_chunks

URL = "/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def chat(content: str, **fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **fields}


def tool_calls_from_stream(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accumulate streamed tool-call deltas the way the OpenAI SDKs do."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls", []):
                call = calls.setdefault(delta["index"], {"function": {"arguments": ""}})
                if "id" in delta:
                    call["id"], call["type"] = delta["id"], delta["type"]
                function = delta.get("function", {})
                if "name" in function:
                    call["function"]["name"] = function["name"]
                call["function"]["arguments"] += function.get("arguments", "")
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_forced_tool_call(server: FakeServer, choice: Any) -> None:
    body = chat(SAY + CALL_TEXT, tools=[WEATHER, TIME], tool_choice=choice)
    response = await server.client.post(URL, json=body)
    [result] = response.json()["choices"]
    assert result["finish_reason"] == "tool_calls"
    message = result["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # The engine was told the tools and given a JSON schema for the call.
    request = server.worker().submitted[-1]
    assert [t["function"]["name"] for t in request.tools] == ["get_weather", "get_time"]
    assert request.constraint is not None
    schema = json.loads(request.constraint.schema or "{}")
    if isinstance(choice, dict):
        assert schema["properties"]["name"] == {"const": "get_weather"}
    else:
        assert len(schema["anyOf"]) == 2


async def test_forced_tool_call_streams_like_openai(server: FakeServer) -> None:
    body = chat(SAY + CALL_TEXT, tools=[WEATHER], tool_choice="required", stream=True)
    chunks = sse_chunks((await server.client.post(URL, json=body)).text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    first_call = next(c for c in chunks if c["choices"][0]["delta"].get("tool_calls"))
    header = first_call["choices"][0]["delta"]["tool_calls"][0]
    assert header["function"] == {"name": "get_weather", "arguments": ""}
    assert header["id"].startswith("call_")
    fragments = [c for c in chunks if c["choices"][0]["delta"].get("tool_calls")][1:]
    assert len(fragments) > 2, "arguments arrive in pieces as they are generated"
    [call] = tool_calls_from_stream(chunks)
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("content" not in c["choices"][0]["delta"] for c in chunks[1:])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("max_tokens", "arguments"),
    # The fake says three characters per token: 14 tokens end inside the arguments, 10 inside
    # the header (the name is still known: only one function can be meant).
    [(14, '{"cit'), (10, "")],
)
async def test_a_forced_call_cut_off_by_max_tokens_is_still_a_tool_call(
    server: FakeServer, stream: bool, max_tokens: int, arguments: str
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    body = chat(SAY + CALL_TEXT, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=max_tokens)
    response = await server.client.post(URL, json={**body, "stream": stream})
    if stream:
        chunks = sse_chunks(response.text)
        [call] = tool_calls_from_stream(chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert all("content" not in c["choices"][0]["delta"] for c in chunks[1:])
    else:
        [result] = response.json()["choices"]
        assert result["finish_reason"] == "length"
        assert result["message"]["content"] is None
        [call] = result["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": arguments}
    assert call["id"].startswith("call_")


@pytest.mark.parametrize("stream", [False, True])
async def test_auto_answers_text_or_calls(server: FakeServer, stream: bool) -> None:
    async def ask(said: str) -> tuple[str | None, list[dict[str, Any]], str]:
        body = chat(SAY + said, tools=[WEATHER, TIME], stream=stream)
        response = await server.client.post(URL, json=body)
        if not stream:
            [result] = response.json()["choices"]
            message = result["message"]
            return message["content"], message.get("tool_calls", []), result["finish_reason"]
        chunks = sse_chunks(response.text)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        return text, tool_calls_from_stream(chunks), chunks[-1]["choices"][0]["finish_reason"]

    content, calls, finish = await ask("It is sunny in Paris today.")
    assert (content, calls, finish) == ("It is sunny in Paris today.", [], "stop")
    content, calls, finish = await ask(CALL_TEXT)
    assert finish == "tool_calls"
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}]
    hermes = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    )
    content, calls, finish = await ask(hermes)
    assert finish == "tool_calls"
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    # Looks like a call but names no tool: it is text after all.
    content, calls, finish = await ask('{"name": "launch_rocket", "arguments": {}}')
    assert (content, calls, finish) == ('{"name": "launch_rocket", "arguments": {}}', [], "stop")


async def test_tool_turns_are_accepted_in_the_history(server: FakeServer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "user", "content": "Thanks then"},
    ]
    body = {"model": FAKE_MODEL, "messages": messages, "tools": [WEATHER]}
    response = await server.client.post(URL, json=body)
    assert response.status_code == 200
    sent = server.worker().submitted[-1].messages
    assert sent[1].tool_calls[0]["function"]["name"] == "get_weather"
    assert (sent[2].role, sent[2].tool_call_id, sent[2].content) == (
        "tool",
        "call_1",
        "18C and sunny",
    )
    del messages[2]["tool_call_id"]
    response = await server.client.post(URL, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[2].tool_call_id"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]},
            "tool_choice",
        ),
        ({"tool_choice": "auto"}, "tool_choice"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "response_format",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools.0.function.name",
        ),
    ],
)
async def test_bad_tool_requests_are_400(
    server: FakeServer, fields: dict[str, Any], param: str
) -> None:
    response = await server.client.post(URL, json=chat("hi", **fields))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_response_format_becomes_a_constraint(server: FakeServer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    format_ = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    await server.client.post(URL, json=chat("x", response_format=format_))
    constraint = server.worker().submitted[-1].constraint
    assert constraint is not None
    assert json.loads(constraint.schema or "") == schema
    await server.client.post(URL, json=chat("x", response_format={"type": "json_object"}))
    constraint = server.worker().submitted[-1].constraint
    assert constraint is not None
    assert constraint.schema is None
    await server.client.post(URL, json=chat("x", response_format={"type": "text"}))
    assert server.worker().submitted[-1].constraint is None


@pytest.mark.parametrize("stream", [False, True])
async def test_n_choices(server: FakeServer, stream: bool) -> None:
    body = chat(
        "a b c",
        n=3,
        seed=10,
        stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    response = await server.client.post(URL, json=body)
    if stream:
        chunks = sse_chunks(response.text)
        usage = chunks[-1]["usage"]
        texts = {i: "" for i in range(3)}
        finishes = {}
        for chunk in chunks[:-1]:
            [choice] = chunk["choices"]
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
        assert texts == {0: "c b a", 1: "c b a", 2: "c b a"}
        assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    else:
        result = response.json()
        usage = result["usage"]
        assert [c["index"] for c in result["choices"]] == [0, 1, 2]
        assert {c["message"]["content"] for c in result["choices"]} == {"c b a"}
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 9)
    seeds = sorted(r.sampling.seed for r in server.worker().submitted[-3:] if r.sampling.seed)
    assert seeds == [10, 11, 12]


@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs(server: FakeServer, stream: bool) -> None:
    body = chat("a b c", logprobs=True, top_logprobs=2, stream=stream)
    response = await server.client.post(URL, json=body)
    if stream:
        entries = [
            entry
            for chunk in sse_chunks(response.text)
            for choice in chunk["choices"]
            if choice.get("logprobs")
            for entry in choice["logprobs"]["content"]
        ]
    else:
        entries = response.json()["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == ["c", " b", " a"]
    for entry in entries:
        assert entry["logprob"] == -0.25
        assert entry["bytes"] == list(entry["token"].encode())
        assert [t["token"] for t in entry["top_logprobs"]] == ["t0", "t1"]
    plain = (await server.client.post(URL, json=chat("a b c"))).json()
    assert plain["choices"][0]["logprobs"] is None


async def test_forced_call_schema_keeps_the_parameters_definitions_reachable(
    server: FakeServer,
) -> None:
    """pydantic puts nested models in the parameters' $defs; once the parameters sit inside
    the call schema, those definitions must move to its root, where `#/$defs/...` points."""
    person = {
        "type": "function",
        "function": {
            "name": "save",
            "parameters": {
                "$defs": {"Role": {"enum": ["admin", "user"], "type": "string"}},
                "properties": {"role": {"$ref": "#/$defs/Role"}},
                "required": ["role"],
                "type": "object",
            },
        },
    }
    body = chat(SAY + '{"name": "save", "arguments": {"role": "admin"}}')
    for choice in ("required", {"type": "function", "function": {"name": "save"}}):
        fields = {"tools": [person, WEATHER], "tool_choice": choice}
        await server.client.post(URL, json={**body, **fields})
        constraint = server.worker().submitted[-1].constraint
        assert constraint is not None
        assert constraint.param == "tools"
        schema = json.loads(constraint.schema or "{}")
        jsonschema.validate({"name": "save", "arguments": {"role": "admin"}}, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "save", "arguments": {"role": "root"}}, schema)
