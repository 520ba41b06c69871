"""POST /v1/messages and /v1/messages/count_tokens over the fake engine: Anthropic's wire format,
its event stream, tools, errors in its envelope, and x-api-key."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.settings import ServerSettings
from tests.app.conftest import FAKE_MODEL, FakeServer
from tests.app.test_auth import client_for
from tests.fakes import FAIL_MARKER, SAY
from tests.metrics_text import value

URL = "/v1/messages"
COUNT_URL = "/v1/messages/count_tokens"
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {"name": "get_time", "input_schema": {"type": "object"}}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def message(content: Any = "one two three", **fields: Any) -> dict[str, Any]:
    body = {
        "model": FAKE_MODEL,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": content}],
    }
    return {**body, **fields}


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event, asserting Anthropic's framing: an `event:` line and one
    `data:` line whose type is the event's name, blank-line separated, no `[DONE]`."""
    assert body.endswith("\n\n"), body[-40:]
    events = []
    for block in body.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue  # a keep-alive comment
        assert len(lines) == 2, block
        name_line, data_line = lines
        assert name_line.startswith("event: "), name_line
        assert data_line.startswith("data: "), data_line
        name, data = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    assert "[DONE]" not in body
    return events


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    return str(body["error"]["message"])


def streamed_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )


# -- messages ------------------------------------------------------------------------------


async def test_a_message(server: FakeServer) -> None:
    response = await server.client.post(URL, json=message("one two three"))
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body == {
        "id": body["id"],
        "type": "message",
        "role": "assistant",
        "model": FAKE_MODEL,
        "content": [{"type": "text", "text": "three two one"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 3,
            "output_tokens": 3,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


@pytest.mark.parametrize(
    "system", ["be brief", [{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}]]
)
async def test_the_system_prompt_goes_first(server: FakeServer, system: Any) -> None:
    response = await server.client.post(URL, json=message("a b", system=system))
    assert response.json()["usage"]["input_tokens"] == 4
    [system_message, user] = server.worker().submitted[-1].messages
    assert system_message.role == "system"
    assert system_message.content.split() == ["be", "brief"]
    assert (user.role, user.content) == ("user", "a b")


async def test_sampling_and_limits_reach_the_engine(server: FakeServer) -> None:
    body = message(temperature=0.5, top_p=0.9, top_k=7, stop_sequences=["x"], max_tokens=9)
    assert (await server.client.post(URL, json=body)).status_code == 200
    request = server.worker().submitted[-1]
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.top_k) == (
        0.5,
        0.9,
        7,
    )
    assert request.stop == ("x",)
    assert request.max_tokens == 9


async def test_the_stream_is_anthropics_event_sequence(server: FakeServer) -> None:
    response = await server.client.post(URL, json=message("one two three", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert (start["content"], start["stop_reason"], start["role"]) == ([], None, "assistant")
    assert start["usage"]["input_tokens"] == 3
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[3][1] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "three"},
    }
    assert streamed_text(events) == "three two one"
    assert events[6][1] == {"type": "content_block_stop", "index": 0}
    delta = events[7][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3
    assert delta["usage"]["input_tokens"] == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_reasons(server: FakeServer, stream: bool) -> None:
    async def stop_of(**fields: Any) -> tuple[str, str | None, str]:
        response = await server.client.post(URL, json={**message(**fields), "stream": stream})
        if not stream:
            body = response.json()
            return body["stop_reason"], body["stop_sequence"], body["content"][0]["text"]
        events = sse_events(response.text)
        delta = next(data for name, data in events if name == "message_delta")["delta"]
        return delta["stop_reason"], delta["stop_sequence"], streamed_text(events)

    assert await stop_of(content="a b c d", max_tokens=2) == ("max_tokens", None, "d c")
    assert await stop_of(content="a b c") == ("end_turn", None, "c b a")
    # The fake says three characters a token: "abc", "STO", "Pde", "f".
    said = SAY + "abcSTOPdef"
    assert await stop_of(content=said, stop_sequences=["STOP"]) == ("stop_sequence", "STOP", "abc")
    assert await stop_of(content=said, stop_sequences=["zzz"]) == ("end_turn", None, "abcSTOPdef")
    # With several stop sequences, the one that matched is named (the engine reports it).
    assert await stop_of(content=said, stop_sequences=["zzz", "STOP"]) == (
        "stop_sequence",
        "STOP",
        "abc",
    )


async def test_an_error_midway_is_an_error_event(server: FakeServer) -> None:
    body = message(f"a b c {FAIL_MARKER}", stream=True)
    response = await server.client.post(URL, json=body)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events][:3] == ["message_start", "ping", "content_block_start"]
    name, data = events[-1]
    assert name == "error"
    assert data["error"]["type"] == "api_error"
    assert data["error"]["message"]
    assert "message_stop" not in [name for name, _ in events]


# -- tools ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}, {"type": "auto"}]
)
async def test_a_tool_call_is_a_tool_use_block(server: FakeServer, choice: Any) -> None:
    body = message(SAY + CALL_TEXT, tools=[WEATHER, TIME], tool_choice=choice)
    response = await server.client.post(URL, json=body)
    result = response.json()
    assert result["stop_reason"] == "tool_use"
    [block] = result["content"]
    assert block["type"] == "tool_use"
    assert block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"city": "Paris"})
    # The engine got the tools as chat completions give them, and a schema when forced.
    request = server.worker().submitted[-1]
    assert [tool["function"]["name"] for tool in request.tools] == ["get_weather", "get_time"]
    assert request.tools[0]["function"]["parameters"] == WEATHER["input_schema"]
    assert request.tools[0]["function"]["description"] == "Weather in a city"
    if choice["type"] == "auto":
        assert request.constraint is None
        return
    assert request.constraint is not None
    schema = json.loads(request.constraint.schema or "{}")
    if choice["type"] == "tool":
        assert schema["properties"]["name"] == {"const": "get_weather"}
    else:
        assert len(schema["anyOf"]) == 2


async def test_tool_choice_none_and_plain_answers_are_text(server: FakeServer) -> None:
    body = message("a b", tools=[WEATHER], tool_choice={"type": "none"})
    response = await server.client.post(URL, json=body)
    assert response.json()["content"] == [{"type": "text", "text": "b a"}]
    assert server.worker().submitted[-1].tools == ()
    response = await server.client.post(URL, json=message("a b", tools=[WEATHER]))
    assert response.json()["content"] == [{"type": "text", "text": "b a"}]
    assert response.json()["stop_reason"] == "end_turn"


def tool_uses(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Accumulate tool_use blocks from a stream the way the Anthropic SDKs do."""
    blocks: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "content_block_start" and data["content_block"]["type"] == "tool_use":
            blocks[data["index"]] = {**data["content_block"], "json": ""}
        elif name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            blocks[data["index"]]["json"] += data["delta"]["partial_json"]
    return [blocks[index] for index in sorted(blocks)]


async def test_a_forced_call_streams_as_input_json_deltas(server: FakeServer) -> None:
    choice = {"type": "tool", "name": "get_weather"}
    body = message(SAY + CALL_TEXT, tools=[WEATHER], tool_choice=choice, stream=True)
    events = sse_events((await server.client.post(URL, json=body)).text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    fragments = [data for name, data in events if name == "content_block_delta"]
    assert len(fragments) > 2, "the input arrives in pieces as it is generated"
    assert all(data["delta"]["type"] == "input_json_delta" for data in fragments)
    [block] = tool_uses(events)
    assert block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {})
    assert json.loads(block["json"]) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_an_auto_call_is_held_and_sent_whole(server: FakeServer) -> None:
    body = message(SAY + CALL_TEXT, tools=[WEATHER], stream=True)
    events = sse_events((await server.client.post(URL, json=body)).text)
    [block] = tool_uses(events)
    assert json.loads(block["json"]) == {"city": "Paris"}
    assert streamed_text(events) == ""
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    # Held text that is no call is sent as text at the end.
    body = message(SAY + '{"not": "a call"}', tools=[WEATHER], stream=True)
    events = sse_events((await server.client.post(URL, json=body)).text)
    assert tool_uses(events) == []
    assert streamed_text(events) == '{"not": "a call"}'


@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_call_cut_off_is_still_a_tool_use(server: FakeServer, stream: bool) -> None:
    choice = {"type": "tool", "name": "get_weather"}
    body = message(SAY + CALL_TEXT, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=14)
    response = await server.client.post(URL, json={**body, "stream": stream})
    if stream:
        events = sse_events(response.text)
        [block] = tool_uses(events)
        assert block["json"] == '{"cit'
        assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    else:
        result = response.json()
        [block] = result["content"]
        assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
        assert result["stop_reason"] == "max_tokens"


async def test_tool_use_and_tool_result_blocks_become_the_chat_messages(
    server: FakeServer,
) -> None:
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "P"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no"}],
                    "is_error": True,
                },
                {"type": "text", "text": "SAY:thanks"},
            ],
        },
    ]
    body = {"model": FAKE_MODEL, "max_tokens": 8, "messages": messages, "tools": [WEATHER]}
    response = await server.client.post(URL, json=body)
    assert response.json()["content"] == [{"type": "text", "text": "thanks"}]
    sent = server.worker().submitted[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool", "tool", "user"]
    assistant = sent[1]
    assert assistant.content == "Let me look."
    assert assistant.tool_calls == (
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "P"}'},
        },
    )
    assert (sent[2].tool_call_id, sent[2].content) == ("toolu_1", "sunny")
    assert (sent[3].tool_call_id, sent[3].content) == ("toolu_2", "Error: no")
    assert sent[4].content == "SAY:thanks"


# -- errors --------------------------------------------------------------------------------


async def test_max_tokens_is_required(server: FakeServer) -> None:
    body = message()
    del body["max_tokens"]
    message_text = assert_error(
        await server.client.post(URL, json=body), 400, "invalid_request_error"
    )
    assert "max_tokens" in message_text


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unknown_model_is_not_found(server: FakeServer, stream: bool) -> None:
    body = {**message(stream=stream), "model": "nope"}
    assert "nope" in assert_error(await server.client.post(URL, json=body), 404, "not_found_error")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ([{"type": "image", "source": {"type": "base64", "data": "x"}}], "text-only"),
        ([{"type": "document", "source": {"type": "text", "data": "x"}}], "text-only"),
        ([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "tool_result"),
        ([{"type": "text"}], "needs 'text'"),
        ([{"type": "tool_result", "content": "x"}], "tool_use_id"),
    ],
)
async def test_blocks_that_cannot_be_used_are_400(
    server: FakeServer, content: Any, words: str
) -> None:
    response = await server.client.post(URL, json=message(content))
    assert words in assert_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tool_choice": {"type": "any"}}, "tool_choice needs tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "x"}}, "not among"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "needs a 'name'"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
        ({"tools": [{"name": "f"}]}, "input_schema"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"system": [{"type": "image", "source": {}}]}, "text-only"),
        ({"messages": []}, "messages"),
    ],
)
async def test_bad_requests_are_400_in_anthropics_envelope(
    server: FakeServer, fields: dict[str, Any], words: str
) -> None:
    response = await server.client.post(URL, json=message(**fields))
    assert words in assert_error(response, 400, "invalid_request_error")


async def test_a_lone_surrogate_is_400(server: FakeServer) -> None:
    body = rb'{"model": "fake-chat", "max_tokens": 4, '
    body += rb'"messages": [{"role": "user", "content": "\ud800"}]}'
    response = await server.client.post(
        URL, content=body, headers={"content-type": "application/json"}
    )
    assert "messages[0].content" in assert_error(response, 400, "invalid_request_error")


async def test_other_apis_keep_the_openai_envelope(server: FakeServer) -> None:
    response = await server.client.post("/v1/chat/completions", json={"model": "nope"})
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    response = await server.client.post("/v1/messages/nope", json={})
    assert_error(response, 404, "not_found_error")


async def test_a_body_too_large_is_request_too_large() -> None:
    async for client in client_for(ServerSettings(max_request_bytes=1024)):
        response = await client.post(URL, json=message("x " * 600))
        assert_error(response, 413, "request_too_large")


async def test_outcomes_are_counted_under_the_anthropic_api(server: FakeServer) -> None:
    await server.client.post(URL, json=message())
    await server.client.post(URL, json=message(stream=True))
    await server.client.post(URL, json={**message(), "model": "nope"})
    metrics = (await server.client.get("/metrics")).text
    success = value(metrics, "slmserve_request_success_total", api="anthropic_messages")
    assert success == 2
    errors = value(
        metrics, "slmserve_request_errors_total", api="anthropic_messages", code="model_not_found"
    )
    assert errors == 1


# -- count_tokens --------------------------------------------------------------------------


async def test_count_tokens_is_the_prompt_of_the_same_request(server: FakeServer) -> None:
    body = message("one two three", system="be brief")
    response = await server.client.post(URL, json=body)
    usage = response.json()["usage"]
    del body["max_tokens"]
    counted = await server.client.post(COUNT_URL, json=body)
    assert counted.status_code == 200
    assert counted.json() == {"input_tokens": usage["input_tokens"]} == {"input_tokens": 5}


async def test_count_tokens_errors(server: FakeServer) -> None:
    body = {"model": "nope", "messages": [{"role": "user", "content": "a"}]}
    assert_error(await server.client.post(COUNT_URL, json=body), 404, "not_found_error")
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": [{"type": "image"}]}]}
    assert_error(await server.client.post(COUNT_URL, json=body), 400, "invalid_request_error")


# -- auth ----------------------------------------------------------------------------------


async def test_x_api_key_opens_every_api_route() -> None:
    async for client in client_for(ServerSettings(api_key="k1")):
        for headers in ({}, {"x-api-key": "nope"}, {"Authorization": "Bearer nope"}):
            response = await client.post(URL, json=message(), headers=headers)
            refusal = assert_error(response, 401, "authentication_error")
            if not headers:
                assert "x-api-key" in refusal
        keyed = {"x-api-key": "k1", "anthropic-version": "2023-06-01"}
        assert (await client.post(URL, json=message(), headers=keyed)).status_code == 200
        bearer = {"Authorization": "Bearer k1"}
        assert (await client.post(URL, json=message(), headers=bearer)).status_code == 200
        chat = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "a b"}]}
        response = await client.post("/v1/chat/completions", json=chat, headers=keyed)
        assert response.status_code == 200
        response = await client.post("/v1/chat/completions", json=chat)
        assert response.json()["error"]["code"] == "invalid_api_key"
        # The admin routes keep their own rule: Authorization only.
        response = await client.post(f"/admin/models/{FAKE_MODEL}/unload", headers=keyed)
        assert response.status_code == 401
