"""The Responses API over the fake engine: shapes the openai SDK parses, typed event streams,
function calls, state (previous_response_id, retrieve, delete, input items) and truncation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from app.main import build_app
from app.settings import ServerSettings
from engines.config import ModelConfig
from tests.app.conftest import FAKE_MODEL, FakeServer, fake_models
from tests.fakes import FAIL_MARKER, SAY, InProcessWorker

URL = "/v1/responses"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@asynccontextmanager
async def fake_server(settings: ServerSettings) -> AsyncIterator[FakeServer]:
    workers: dict[str, list[InProcessWorker]] = {}

    def factory(config: ModelConfig) -> InProcessWorker:
        worker = InProcessWorker(config)
        workers.setdefault(config.name, []).append(worker)
        return worker

    app = build_app(settings, fake_models(), worker_factory=factory)
    async with app.router.lifespan_context(app):
        await app.state.pool.wait_preloaded()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield FakeServer(client, workers)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FakeServer]:
    async with fake_server(ServerSettings(data_dir=tmp_path)) as served:
        yield served


def request(input_: Any, **fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "input": input_, **fields}


async def create(server: FakeServer, input_: Any, **fields: Any) -> dict[str, Any]:
    response = await server.client.post(URL, json=request(input_, **fields))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    SDKResponse.model_validate(body)
    return body


def output_text(response: dict[str, Any]) -> str:
    return SDKResponse.model_validate(response).output_text


def typed_events(body: str) -> list[dict[str, Any]]:
    """The events of a typed SSE stream, asserting OpenAI's framing: an `event:` line named
    like the payload's type, one `data:` line, no [DONE]; every payload parses as the SDK's
    event type, and sequence numbers count up from 0."""
    assert body.endswith("\n\n")
    events = []
    for block in body.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2, block
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        payload = json.loads(lines[1][len("data: ") :])
        assert payload["type"] == lines[0][len("event: ") :]
        STREAM_EVENT.validate_python(payload)
        events.append(payload)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


async def stream(server: FakeServer, input_: Any, **fields: Any) -> list[dict[str, Any]]:
    response = await server.client.post(URL, json=request(input_, stream=True, **fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return typed_events(response.text)


async def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


# -- create --------------------------------------------------------------------------------


async def test_a_response_has_the_shape_the_sdk_parses(server: FakeServer) -> None:
    body = await create(
        server,
        "one two three",
        instructions="Be brief.",
        metadata={"k": "v"},
        user="u1",
        temperature=0,
    )
    assert body["id"].startswith("resp_")
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["error"] is None
    assert body["incomplete_details"] is None
    assert body["model"] == FAKE_MODEL
    [message] = body["output"]
    assert message["id"].startswith("msg_")
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["status"] == "completed"
    assert message["content"] == [
        {"type": "output_text", "text": "three two one", "annotations": []}
    ]
    assert output_text(body) == "three two one"
    # The fake counts one token per word: instructions (2) and input (3).
    assert body["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 8,
    }
    assert body["instructions"] == "Be brief."
    assert body["metadata"] == {"k": "v"}
    assert body["user"] == "u1"
    assert body["temperature"] == 0
    assert body["store"] is True
    assert body["truncation"] == "disabled"
    assert body["tool_choice"] == "auto"
    assert body["tools"] == []
    assert body["parallel_tool_calls"] is True
    assert body["text"] == {"format": {"type": "text"}}
    assert body["previous_response_id"] is None
    assert "output_text" not in body  # an SDK-side convenience
    [generation] = server.worker().submitted
    assert [(m.role, m.content) for m in generation.messages] == [
        ("system", "Be brief."),
        ("user", "one two three"),
    ]
    assert generation.sampling.temperature == 0


async def test_input_items_become_the_conversation(server: FakeServer) -> None:
    items = [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        {"role": "user", "content": "a b"},
    ]
    body = await create(server, items)
    assert output_text(body) == "b a"
    [generation] = server.worker().submitted
    assert [(m.role, m.content) for m in generation.messages] == [
        ("system", "Rules."),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "a b"),
    ]


async def test_cut_off_by_max_output_tokens_is_incomplete(server: FakeServer) -> None:
    body = await create(server, "a b c d e", max_output_tokens=2)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"
    assert output_text(body) == "e d"
    assert body["max_output_tokens"] == 2


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER, {"type": "code_interpreter"}]}, "tools[1].type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ],
)
async def test_what_cannot_run_is_a_400_naming_it(
    server: FakeServer, fields: dict[str, Any], param: str
) -> None:
    response = await server.client.post(URL, json=request("hi", **fields))
    error = await error_of(response, 400)
    assert error["param"] == param
    if param.startswith("tools["):
        assert repr(fields["tools"][-1]["type"]) in error["message"]


@pytest.mark.parametrize(
    ("input_", "param"),
    [
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "input[0]"),
        ([{"type": "item_reference", "id": "msg_1"}], "input[0].type"),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input.0.call_id"),
        ([{"role": "robot", "content": "hi"}], "input.0.role"),
        ([{"type": "function_call_output", "call_id": "call_x", "output": "1"}], "input[0]"),
        ([], "input"),
    ],
)
async def test_bad_input_items_are_400(server: FakeServer, input_: Any, param: str) -> None:
    response = await server.client.post(URL, json=request(input_))
    error = await error_of(response, 400)
    assert error["param"].startswith(param), error


async def test_text_format_becomes_a_constraint(server: FakeServer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    body = await create(server, "x", text={"format": fmt})
    assert body["text"] == {"format": fmt}
    await create(server, "y", text={"format": {"type": "json_object"}})
    first, second = server.worker().submitted
    assert first.constraint is not None
    assert first.constraint.schema is not None
    assert json.loads(first.constraint.schema) == schema
    assert second.constraint is not None
    assert second.constraint.schema is None


# -- streaming -----------------------------------------------------------------------------


async def test_a_stream_is_typed_events_in_order(server: FakeServer) -> None:
    events = await stream(server, "one two three")
    types = [event["type"] for event in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    item_id = events[2]["item"]["id"]
    assert all(d["item_id"] == item_id and d["output_index"] == 0 for d in deltas)
    text = "".join(d["delta"] for d in deltas)
    assert text == "three two one"
    assert events[7]["text"] == text
    assert events[8]["part"] == {"type": "output_text", "text": text, "annotations": []}
    assert events[9]["item"]["status"] == "completed"
    final = events[-1]["response"]
    assert output_text(final) == text
    assert final["id"] == events[0]["response"]["id"]
    assert final["usage"]["output_tokens"] == 3
    # What retrieve returns is what the stream ended with.
    stored = await server.client.get(f"{URL}/{final['id']}")
    assert stored.json() == final


async def test_a_stream_cut_off_ends_incomplete(server: FakeServer) -> None:
    events = await stream(server, "a b c d", max_output_tokens=2)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


async def test_an_error_mid_stream_is_response_failed(server: FakeServer) -> None:
    events = await stream(server, f"one two {FAIL_MARKER}")
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    # A failed response is not stored.
    assert (await server.client.get(f"{URL}/{failed['id']}")).status_code == 404


async def test_a_prompt_that_cannot_run_is_an_http_error_not_a_stream(
    server: FakeServer,
) -> None:
    response = await server.client.post(URL, json=request("x " * 70, stream=True))
    error = await error_of(response, 400)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "input"


# -- function calls ------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
async def test_a_forced_call_is_a_function_call_item(server: FakeServer, choice: Any) -> None:
    body = await create(server, SAY + CALL_TEXT, tools=[WEATHER, TIME], tool_choice=choice)
    [call] = body["output"]
    assert call["type"] == "function_call"
    assert call["id"].startswith("fc_")
    assert call["call_id"].startswith("call_")
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert call["status"] == "completed"
    assert body["tool_choice"] == choice
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "get_time"]
    generation = server.worker().submitted[-1]
    assert generation.constraint is not None
    assert generation.constraint.param == "tools"
    assert [tool["function"]["name"] for tool in generation.tools] == ["get_weather", "get_time"]


async def test_a_forced_call_streams_its_arguments(server: FakeServer) -> None:
    events = await stream(server, SAY + CALL_TEXT, tools=[WEATHER], tool_choice="required")
    types = [event["type"] for event in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert set(types[3:-3]) == {"response.function_call_arguments.delta"}
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2]["item"]
    assert added["type"] == "function_call"
    assert added["name"] == "get_weather"
    assert added["status"] == "in_progress"
    arguments = "".join(e["delta"] for e in events if e["type"].endswith("arguments.delta"))
    assert json.loads(arguments) == {"city": "Paris"}
    assert events[-3]["arguments"] == arguments
    [call] = events[-1]["response"]["output"]
    assert call["arguments"] == arguments
    assert call["call_id"] == added["call_id"]


@pytest.mark.parametrize("streamed", [False, True])
async def test_auto_answers_text_or_calls(server: FakeServer, streamed: bool) -> None:
    async def output(input_: str) -> list[dict[str, Any]]:
        if streamed:
            events = await stream(server, input_, tools=[WEATHER])
            items: list[dict[str, Any]] = events[-1]["response"]["output"]
            return items
        body = await create(server, input_, tools=[WEATHER])
        return list(body["output"])

    [call] = await output(SAY + CALL_TEXT)
    assert call["type"] == "function_call"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    [message] = await output("plain words")
    assert message["type"] == "message"
    assert message["content"][0]["text"] == "words plain"


async def test_parallel_tool_calls_false_keeps_one_call(server: FakeServer) -> None:
    two = f"<tool_call>{CALL_TEXT}</tool_call><tool_call>{CALL_TEXT}</tool_call>"
    body = await create(server, SAY + two, tools=[WEATHER])
    assert [item["type"] for item in body["output"]] == ["function_call"] * 2
    body = await create(server, SAY + two, tools=[WEATHER], parallel_tool_calls=False)
    assert [item["type"] for item in body["output"]] == ["function_call"]
    assert body["parallel_tool_calls"] is False


async def test_a_function_result_continues_the_response(server: FakeServer) -> None:
    first = await create(server, SAY + CALL_TEXT, tools=[WEATHER], tool_choice="required")
    [call] = first["output"]
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    second = await create(
        server, [result], previous_response_id=first["id"], tools=[WEATHER], tool_choice="none"
    )
    assert second["output"][0]["type"] == "message"
    assert second["previous_response_id"] == first["id"]
    generation = server.worker().submitted[-1]
    user, assistant, tool = generation.messages
    assert user.content == SAY + CALL_TEXT
    assert assistant.role == "assistant"
    assert assistant.tool_calls[0]["id"] == call["call_id"]
    assert assistant.tool_calls[0]["function"]["name"] == "get_weather"
    assert (tool.role, tool.content, tool.tool_call_id) == ("tool", "sunny", call["call_id"])


async def test_a_whole_tool_turn_can_be_sent_without_state(server: FakeServer) -> None:
    items = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "noon"}],
        },
    ]
    await create(server, items, tools=[WEATHER, TIME], store=False)
    generation = server.worker().submitted[-1]
    assert [m.role for m in generation.messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in generation.messages[1].tool_calls] == ["call_1", "call_2"]
    assert generation.messages[3].content == "noon"


# -- state ---------------------------------------------------------------------------------


async def test_previous_response_id_continues_the_conversation(server: FakeServer) -> None:
    first = await create(server, "one two", instructions="Old rules.")
    second = await create(server, "three four", previous_response_id=first["id"])
    third = await create(
        server, "five", previous_response_id=second["id"], instructions="New rules."
    )
    assert output_text(third) == "five"
    generation = server.worker().submitted[-1]
    # Instructions are not carried over; every earlier turn is.
    assert [(m.role, m.content) for m in generation.messages] == [
        ("system", "New rules."),
        ("user", "one two"),
        ("assistant", "two one"),
        ("user", "three four"),
        ("assistant", "four three"),
        ("user", "five"),
    ]
    assert third["usage"]["input_tokens"] == 11
    items = (await server.client.get(f"{URL}/{third['id']}/input_items?order=asc")).json()
    ResponseItemList.model_validate(items)
    assert [(item["type"], item.get("role")) for item in items["data"]] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert items["data"][1]["id"] == first["output"][0]["id"]


async def test_retrieve_delete_and_input_items(server: FakeServer) -> None:
    items = [{"role": "user", "content": f"turn {index}"} for index in range(5)]
    created = await create(server, items)
    response_id = created["id"]
    retrieved = await server.client.get(f"{URL}/{response_id}")
    assert retrieved.status_code == 200
    assert retrieved.json() == created

    listing = (await server.client.get(f"{URL}/{response_id}/input_items")).json()
    ResponseItemList.model_validate(listing)
    texts = [item["content"][0]["text"] for item in listing["data"]]
    assert texts == [f"turn {index}" for index in reversed(range(5))]  # newest first
    assert listing["object"] == "list"
    assert listing["has_more"] is False
    assert listing["first_id"] == listing["data"][0]["id"]
    assert listing["last_id"] == listing["data"][-1]["id"]
    assert all(item["id"].startswith("msg_") for item in listing["data"])
    assert all(item["status"] == "completed" for item in listing["data"])

    url = f"{URL}/{response_id}/input_items"
    page = (await server.client.get(url, params={"limit": 2, "order": "asc"})).json()
    assert [item["content"][0]["text"] for item in page["data"]] == ["turn 0", "turn 1"]
    assert page["has_more"] is True
    params = {"limit": 2, "order": "asc", "after": page["last_id"]}
    rest = (await server.client.get(url, params=params)).json()
    assert [item["content"][0]["text"] for item in rest["data"]] == ["turn 2", "turn 3"]
    bad_pages: list[dict[str, str | int]] = [{"limit": 0}, {"limit": 101}, {"order": "up"}]
    for params in bad_pages:
        error = await error_of(await server.client.get(url, params=params), 400)
        assert error["param"] == next(iter(params))
    error = await error_of(await server.client.get(url, params={"after": "msg_x"}), 400)
    assert error["param"] == "after"

    replay = await server.client.get(f"{URL}/{response_id}", params={"stream": "true"})
    assert (await error_of(replay, 400))["param"] == "stream"

    deleted = await server.client.delete(f"{URL}/{response_id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": response_id, "object": "response", "deleted": True}
    for method, path in [
        ("GET", f"{URL}/{response_id}"),
        ("DELETE", f"{URL}/{response_id}"),
        ("GET", f"{URL}/{response_id}/input_items"),
    ]:
        error = await error_of(await server.client.request(method, path), 404)
        assert error["param"] == "response_id"
        assert error["code"] == "response_not_found"
        assert response_id in error["message"]


async def test_store_false_keeps_nothing(server: FakeServer) -> None:
    body = await create(server, "one", store=False)
    assert body["store"] is False
    assert (await server.client.get(f"{URL}/{body['id']}")).status_code == 404
    response = await server.client.post(URL, json=request("two", previous_response_id=body["id"]))
    error = await error_of(response, 404)
    assert error["param"] == "previous_response_id"
    assert error["code"] == "previous_response_not_found"
    # A response that is not stored can still continue one that is.
    first = await create(server, "three")
    unstored = await create(server, "four", previous_response_id=first["id"], store=False)
    assert unstored["previous_response_id"] == first["id"]


async def test_stored_responses_survive_a_restart(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path)
    async with fake_server(settings) as first_server:
        created = await create(first_server, "one two")
    assert (tmp_path / "responses.sqlite3").is_file()
    async with fake_server(settings) as second_server:
        retrieved = await second_server.client.get(f"{URL}/{created['id']}")
        assert retrieved.json() == created
        continued = await create(second_server, "three", previous_response_id=created["id"])
        assert output_text(continued) == "three"
        assert len(second_server.worker().submitted[-1].messages) == 3


async def test_a_server_that_stores_nothing_writes_nothing(tmp_path: Path) -> None:
    async with fake_server(ServerSettings(data_dir=tmp_path / "data")) as served:
        await create(served, "one", store=False)
        assert (await served.client.get(f"{URL}/resp_x")).status_code == 404
    assert not (tmp_path / "data" / "responses.sqlite3").exists()


async def test_responses_are_counted_under_their_api(server: FakeServer) -> None:
    await create(server, "one")
    metrics = (await server.client.get("/metrics")).text
    assert 'api="responses"' in metrics


# -- truncation ----------------------------------------------------------------------------


async def long_chain(server: FakeServer, turns: int) -> str:
    """A stored conversation of `turns` turns, 16 words each (question and answer)."""
    previous: str | None = None
    for turn in range(turns):
        words = " ".join(f"w{turn}x{index}" for index in range(8))
        previous = str((await create(server, words, previous_response_id=previous))["id"])
    assert previous is not None
    return previous


async def test_truncation_disabled_refuses_what_does_not_fit(server: FakeServer) -> None:
    previous = await long_chain(server, 3)  # 48 words of the fake's context of 64
    body = request("a b c d e f g h", previous_response_id=previous, max_output_tokens=10)
    response = await server.client.post(URL, json=body)
    error = await error_of(response, 400)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "input"


async def test_truncation_auto_drops_the_oldest_turns(server: FakeServer) -> None:
    previous = await long_chain(server, 3)
    body = await create(
        server,
        "a b c d e f g h",
        previous_response_id=previous,
        max_output_tokens=10,
        truncation="auto",
        instructions="keep me",
    )
    assert body["truncation"] == "auto"
    assert output_text(body) == "h g f e d c b a"
    generation = server.worker().submitted[-1]
    contents = [m.content for m in generation.messages]
    # Instructions (2) + two earlier turns (32) + this one (8) + 10 to generate fit in 64;
    # the first turn went.
    assert contents[0] == "keep me"
    assert len(contents) == 6
    assert contents[1].startswith("w1x0")
    assert body["usage"]["input_tokens"] == 42
    items = (await server.client.get(f"{URL}/{body['id']}/input_items?order=asc")).json()
    assert items["data"][0]["content"][0]["text"].startswith("w1x0")


async def test_truncation_auto_keeps_system_messages(server: FakeServer) -> None:
    system = {"role": "system", "content": "s " * 10}
    old = [{"role": "user", "content": "u " * 30}, {"role": "assistant", "content": "a " * 30}]
    items = [system, *old, {"role": "user", "content": "x y"}]
    body = await create(server, items, truncation="auto")
    generation = server.worker().submitted[-1]
    assert [m.role for m in generation.messages] == ["system", "user"]
    assert output_text(body) == "y x"


async def test_truncation_auto_cannot_drop_the_last_turn(server: FakeServer) -> None:
    body = request("x " * 70, truncation="auto")
    error = await error_of(await server.client.post(URL, json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "input"
