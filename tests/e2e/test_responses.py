"""The Responses API on real models, on both engines: the official openai SDK and the
openai-agents SDK (its default model speaks the Responses API) against the live server.

The model is tiny (SmolLM2-135M), so the checks are on shapes and consistency: what the SDK
parses, token counts against an independent tokenizer, state that chains turns and survives a
restart, tool calls and JSON documents that the server's constraints make valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
    set_tracing_disabled,
)
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseStreamEvent,
)

from tests.conftest import DEFAULT_MODEL_NAME
from tests.e2e.conftest import ChatMessages, Target, openai_client
from tests.e2e.server import run_server, write_models

QUESTION = "What are the three primary colours?"
ASK_WEATHER = "What is the weather in Paris?"
WEATHER_REPORT = "18 degrees and sunny"
MAX_TOKENS = 24
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
FORECAST_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo"]},
        "sunny": {"type": "boolean"},
        "note": {"type": "string", "maxLength": 20},
    },
    "required": ["city", "sunny", "note"],
    "additionalProperties": False,
}


def create(target: Target, input_: Any, **fields: Any) -> Response:
    fields.setdefault("max_output_tokens", MAX_TOKENS)
    response: Response = target.client.responses.create(
        model=target.model, input=input_, temperature=0, **fields
    )
    return response


def assert_finished(response: Response, max_tokens: int = MAX_TOKENS) -> None:
    """Completed, or cut off at max_output_tokens and saying so."""
    assert response.usage is not None
    assert response.usage.output_tokens <= max_tokens
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.usage.output_tokens == max_tokens
    else:
        assert response.status == "completed"
        assert response.incomplete_details is None


def test_a_response(target: Target) -> None:
    response = create(target, QUESTION, instructions="Answer briefly.")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.model == target.model
    assert response.error is None
    assert_finished(response)
    [message] = response.output
    assert isinstance(message, ResponseOutputMessage)
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert response.output_text.strip()
    assert response.instructions == "Answer briefly."
    assert response.max_output_tokens == MAX_TOKENS
    usage = response.usage
    assert usage is not None
    expected: ChatMessages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": QUESTION},
    ]
    assert usage.input_tokens == target.count_prompt_tokens(expected)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_a_stream_is_the_typed_event_sequence(target: Target) -> None:
    events: list[ResponseStreamEvent] = list(
        target.client.responses.create(
            model=target.model,
            input=QUESTION,
            temperature=0,
            max_output_tokens=MAX_TOKENS,
            stream=True,
        )
    )
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = types[4:-4]
    assert deltas
    assert set(deltas) == {"response.output_text.delta"}
    assert types[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    final = last.response
    assert_finished(final)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text
    # What the stream ended with is what is stored.
    retrieved = target.client.responses.retrieve(final.id)
    assert retrieved.model_dump() == final.model_dump()


def test_a_function_tool_round_trip(target: Target) -> None:
    called = create(
        target,
        ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
    )
    assert called.status == "completed"
    [call] = called.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"}
    assert isinstance(arguments["city"], str)

    result = {"type": "function_call_output", "call_id": call.call_id, "output": WEATHER_REPORT}
    answered = create(
        target,
        [result],
        previous_response_id=called.id,
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert_finished(answered)
    [message] = answered.output
    assert isinstance(message, ResponseOutputMessage)
    assert answered.previous_response_id == called.id
    items = target.client.responses.input_items.list(answered.id, order="asc").data
    assert [item.type for item in items] == ["message", "function_call", "function_call_output"]


def test_text_format_json_schema(target: Target) -> None:
    response = create(
        target,
        "Describe the weather in one of Paris, Lima or Oslo as JSON.",
        text={
            "format": {
                "type": "json_schema",
                "name": "forecast",
                "schema": FORECAST_SCHEMA,
                "strict": True,
            }
        },
        max_output_tokens=80,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), FORECAST_SCHEMA)
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_previous_response_id_over_three_turns(target: Target) -> None:
    turns = ["My name is Ada. Remember it.", "What is my name?", "Say my name once more."]
    responses: list[Response] = []
    for text in turns:
        previous = {"previous_response_id": responses[-1].id} if responses else {}
        responses.append(create(target, text, **previous))
    first, second, third = responses
    conversation: ChatMessages = [
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": turns[1]},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": turns[2]},
    ]
    # The third prompt is the whole conversation, token for token.
    assert third.usage is not None
    assert third.usage.input_tokens == target.count_prompt_tokens(conversation)
    # Both engines kept the earlier turns' KV cache (GGUF slots, parked ONNX generators).
    assert third.usage.input_tokens_details.cached_tokens > 0
    items = target.client.responses.input_items.list(third.id, order="asc", limit=100).data
    assert [getattr(item, "role", None) for item in items] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert items[1].id == first.output[0].id


def test_retrieve_delete_and_input_items(target: Target) -> None:
    messages: Any = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": QUESTION},
    ]
    created = create(target, messages, metadata={"case": "retrieve"})
    retrieved = target.client.responses.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()
    assert retrieved.metadata == {"case": "retrieve"}
    page = target.client.responses.input_items.list(created.id)
    assert [getattr(item, "role", None) for item in page.data] == ["user", "developer"]
    assert page.has_next_page() is False
    target.client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError, match=created.id):
        target.client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError, match=created.id):
        target.client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError, match=created.id):
        target.client.responses.delete(created.id)


def test_store_false_keeps_nothing(target: Target) -> None:
    response = create(target, QUESTION, store=False)
    assert response.output_text.strip()
    with pytest.raises(openai.NotFoundError):
        target.client.responses.retrieve(response.id)


def test_stored_responses_survive_a_restart(default_model_path: Path, tmp_path: Path) -> None:
    """The store is the server's, not the engine's: one engine shows it."""
    model = {
        "name": DEFAULT_MODEL_NAME,
        "engine": "gguf",
        "path": str(default_model_path),
        "context_length": 1024,
        "parallel": 1,
    }
    models_file = write_models(tmp_path / "models.yaml", [model])
    data = ("--data-dir", str(tmp_path / "data"))
    with run_server(models_file, tmp_path / "first.log", extra_args=data) as server:
        client = openai_client(server)
        created = client.responses.create(
            model=DEFAULT_MODEL_NAME, input=QUESTION, temperature=0, max_output_tokens=8
        )
    assert (tmp_path / "data" / "responses.sqlite3").is_file()
    with run_server(models_file, tmp_path / "second.log", extra_args=data) as server:
        client = openai_client(server)
        retrieved = client.responses.retrieve(created.id)
        assert retrieved.model_dump() == created.model_dump()
        continued = client.responses.create(
            model=DEFAULT_MODEL_NAME,
            input="Thanks.",
            previous_response_id=created.id,
            temperature=0,
            max_output_tokens=8,
        )
        items = client.responses.input_items.list(continued.id, order="asc").data
        assert [getattr(item, "role", None) for item in items] == ["user", "assistant", "user"]


# -- openai-agents (its default model uses the Responses API) -------------------------------


async def test_agents_sdk_runs_a_function_tool(target: Target) -> None:
    set_tracing_disabled(True)
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city.

        Args:
            city: The city's name.
        """
        cities.append(city)
        return f"{WEATHER_REPORT} in {city}"

    client = openai.AsyncOpenAI(
        base_url=f"{target.server.base_url}/v1", api_key="unused", max_retries=0
    )
    agent = Agent(
        name="weather",
        instructions="Answer questions about the weather with the get_weather tool.",
        model=OpenAIResponsesModel(model=target.model, openai_client=client),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=60),
        tool_use_behavior="stop_on_first_tool",
    )
    try:
        result = await Runner.run(agent, ASK_WEATHER, max_turns=2)
        streamed = Runner.run_streamed(agent, "What is the weather in Lima?", max_turns=2)
        async for _ in streamed.stream_events():
            pass
    finally:
        await client.close()
    # The tool ran once per run, with the arguments the model produced, and ended the run.
    assert len(cities) == 2
    assert all(isinstance(city, str) and city for city in cities)
    calls = [item for item in result.new_items if isinstance(item, ToolCallItem)]
    outputs = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert len(calls) == len(outputs) == 1
    raw_call: Any = calls[0].raw_item
    assert raw_call.name == "get_weather"
    assert json.loads(raw_call.arguments) == {"city": cities[0]}
    assert result.final_output == f"{WEATHER_REPORT} in {cities[0]}"
    assert streamed.final_output == f"{WEATHER_REPORT} in {cities[1]}"
