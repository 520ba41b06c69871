"""The Anthropic Messages API on real models, through the official anthropic client, on both
engines: plain and streamed messages, a tool-use round trip, count_tokens, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message, MessageParam, TextBlock, ToolParam, ToolUseBlock

from tests.e2e.conftest import Target

ASK_COLOURS = "What are the three primary colours?"
QUESTION: list[MessageParam] = [{"role": "user", "content": ASK_COLOURS}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    },
}
ASK_WEATHER = "What is the weather in Paris?"
# The SDK has no sampling parameters any more (newer Claude models refuse them); the API still
# takes them, so they travel as extra body fields.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(target: Target) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=target.server.base_url, api_key="x", max_retries=0) as client:
        yield client


def create(
    client: anthropic.Anthropic, target: Target, messages: list[MessageParam], **fields: Any
) -> Message:
    fields.setdefault("max_tokens", 24)
    fields.setdefault("extra_body", GREEDY)
    message: Message = client.messages.create(model=target.model, messages=messages, **fields)
    return message


def text_of(message: Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


def test_a_message(client: anthropic.Anthropic, target: Target) -> None:
    message = create(client, target, QUESTION)
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", target.model)
    [block] = message.content
    assert isinstance(block, TextBlock)
    assert block.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.stop_sequence is None
    usage = message.usage
    assert 1 <= usage.output_tokens <= 24
    assert usage.cache_creation_input_tokens == 0
    # The whole prompt, as the model's own tokenizer and template count it.
    whole_prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    expected = target.count_prompt_tokens([{"role": "user", "content": ASK_COLOURS}])
    assert whole_prompt == expected


def test_max_tokens_is_the_stop_reason_when_it_cuts(
    client: anthropic.Anthropic, target: Target
) -> None:
    essay: list[MessageParam] = [{"role": "user", "content": "Write a long essay about the sea."}]
    message = create(client, target, essay, max_tokens=7)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 7


def test_the_stream_helper_builds_the_same_message(
    client: anthropic.Anthropic, target: Target
) -> None:
    with client.messages.stream(
        model=target.model, messages=QUESTION, max_tokens=24, extra_body=GREEDY
    ) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) > 1
    assert text_of(final) == "".join(deltas)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens >= 1
    # Greedy: the streamed answer is the non-streamed one.
    message = create(client, target, QUESTION)
    assert text_of(message) == text_of(final)
    assert message.stop_reason == final.stop_reason
    assert message.usage.output_tokens == final.usage.output_tokens


def test_stop_sequences_end_before_the_sequence(
    client: anthropic.Anthropic, target: Target
) -> None:
    count: list[MessageParam] = [{"role": "user", "content": "Count from 1 to 10 with commas."}]
    full = text_of(create(client, target, count, max_tokens=40))
    assert "4" in full
    message = create(client, target, count, max_tokens=40, stop_sequences=["4"])
    assert text_of(message) == full[: full.index("4")]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "4")


def test_a_tool_use_round_trip(client: anthropic.Anthropic, target: Target) -> None:
    ask: list[MessageParam] = [{"role": "user", "content": ASK_WEATHER}]
    called = create(
        client,
        target,
        ask,
        max_tokens=60,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert called.stop_reason == "tool_use"
    [call] = called.content
    assert isinstance(call, ToolUseBlock)
    assert call.id.startswith("toolu_")
    assert call.name == "get_weather"
    assert isinstance(call.input, dict)
    assert isinstance(call.input["city"], str)
    history: list[MessageParam] = [
        *ask,
        {"role": "assistant", "content": called.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees, sunny"}
            ],
        },
    ]
    answer = create(client, target, history, max_tokens=40, tools=[WEATHER])
    assert answer.content
    assert all(isinstance(block, TextBlock | ToolUseBlock) for block in answer.content)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # The history with the call and its result is in the prompt.
    assert answer.usage.input_tokens + (answer.usage.cache_read_input_tokens or 0) > (
        called.usage.input_tokens + (called.usage.cache_read_input_tokens or 0)
    )


def test_a_forced_tool_call_streams_its_input(client: anthropic.Anthropic, target: Target) -> None:
    with client.messages.stream(
        model=target.model,
        messages=[{"role": "user", "content": ASK_WEATHER}],
        max_tokens=60,
        extra_body=GREEDY,
        tools=[WEATHER],
        tool_choice={"type": "any"},
    ) as stream:
        final = stream.get_final_message()
    [call] = final.content
    assert isinstance(call, ToolUseBlock)
    assert call.name == "get_weather"
    assert isinstance(call.input, dict)
    assert isinstance(call.input["city"], str)
    assert final.stop_reason == "tool_use"


def test_count_tokens_is_the_input_of_the_same_request(
    client: anthropic.Anthropic, target: Target
) -> None:
    fields: dict[str, Any] = {
        "model": target.model,
        "system": "You answer briefly.",
        "messages": [{"role": "user", "content": ASK_WEATHER}],
        "tools": [WEATHER],
    }
    counted = client.messages.count_tokens(**fields)
    message = client.messages.create(**fields, max_tokens=5, extra_body=GREEDY)
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    without_tools = {key: value for key, value in fields.items() if key != "tools"}
    assert client.messages.count_tokens(**without_tools).input_tokens < counted.input_tokens


def test_a_bad_request_is_bad_request_error(client: anthropic.Anthropic, target: Target) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, target, QUESTION, extra_body={"temperature": 1.5})
    assert caught.value.status_code == 400
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    image: list[MessageParam] = [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
            ],
        }
    ]
    with pytest.raises(anthropic.BadRequestError, match="text-only"):
        create(client, target, image)


def test_an_unknown_model_is_not_found_error(client: anthropic.Anthropic, target: Target) -> None:
    for stream in (False, True):
        with pytest.raises(anthropic.NotFoundError) as caught:
            client.messages.create(
                model="no-such-model", messages=QUESTION, max_tokens=4, stream=stream
            )
        assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        assert target.model in caught.value.message
