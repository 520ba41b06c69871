"""Client libraries people point at an OpenAI-compatible server, on real models, on both engines.

langchain-openai, instructor and the openai-agents SDK each build their own requests (forced
tools, JSON schemas from pydantic models, tool results in the history) and parse the answers
themselves. Every check asserts on what the library parsed: types, bounds, required fields, a
tool that really ran with parseable arguments. Structured output is enforced server-side
(grammar or guidance), so even a 135M model must produce documents that validate.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

import instructor
import jsonschema
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, Field, SecretStr

from tests.e2e.conftest import ChatMessages, Target

QUESTION = "What are the three primary colours?"
ASK_WEATHER = "What is the weather in Paris?"
PERSON_PROMPT = "Invent a person who lives in Paris. Answer as JSON."
MAX_ANSWER_TOKENS = 24
# Bounded strings keep the worst case (every string at its maxLength) well inside this.
MAX_STRUCTURED_TOKENS = 160
WEATHER_REPORT = "18 degrees and sunny"


class Role(StrEnum):
    ENGINEER = "engineer"
    TEACHER = "teacher"
    DOCTOR = "doctor"


class Address(BaseModel):
    """Where a person lives."""

    city: Literal["Paris", "Lima", "Oslo"]
    street: str = Field(min_length=1, max_length=30)


class Person(BaseModel):
    """A person. Its JSON schema does not say `additionalProperties`: as with OpenAI's strict
    structured outputs, the server must allow only the listed keys anyway."""

    name: str = Field(min_length=1, max_length=20)
    age: int = Field(ge=0, le=120)
    role: Role
    address: Address


def without_repeated_keys(text: str) -> Any:
    """Parse JSON, refusing an object that names a key twice (json.loads keeps the last)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        assert len(keys) == len(set(keys)), f"repeated keys in {text!r}"
        return dict(items)

    return json.loads(text, object_pairs_hook=pairs)


def assert_person(person: object, document: Any) -> None:
    """The library parsed a valid Person from exactly this document, which holds exactly the
    declared keys (pydantic would silently drop extra ones)."""
    assert isinstance(person, Person)
    assert 0 <= person.age <= 120
    assert isinstance(person.role, Role)
    assert person.address.city in ("Paris", "Lima", "Oslo")
    assert 1 <= len(person.name) <= 20
    assert isinstance(document, dict)
    assert set(document) == set(Person.model_fields), document
    assert set(document["address"]) == set(Address.model_fields), document
    jsonschema.validate(document, Person.model_json_schema())
    # instructor hands back a subclass of the response model: compare the fields.
    assert Person.model_validate(document).model_dump() == person.model_dump()


def base_url(target: Target) -> str:
    return f"{target.server.base_url}/v1"


# -- langchain-openai -----------------------------------------------------------------------


def chat_model(target: Target, max_tokens: int = MAX_ANSWER_TOKENS) -> ChatOpenAI:
    return ChatOpenAI(
        model=target.model,
        base_url=base_url(target),
        api_key=SecretStr("unused"),
        temperature=0,
        max_completion_tokens=max_tokens,
        max_retries=0,
        use_responses_api=False,
        # Streams ask for the usage chunk (stream_options.include_usage), as against OpenAI.
        stream_usage=True,
    )


def test_langchain_invoke_matches_the_sdk(target: Target) -> None:
    message = chat_model(target).invoke(QUESTION)
    assert isinstance(message, AIMessage)
    assert isinstance(message.content, str)
    # Greedy: the same request through the official SDK gives the same text.
    messages: ChatMessages = [{"role": "user", "content": QUESTION}]
    direct = target.client.chat.completions.create(
        model=target.model, messages=messages, temperature=0, max_tokens=MAX_ANSWER_TOKENS
    )
    assert message.content == direct.choices[0].message.content
    assert message.content
    assert message.response_metadata["finish_reason"] == direct.choices[0].finish_reason
    assert message.usage_metadata is not None
    assert direct.usage is not None
    assert message.usage_metadata["output_tokens"] == direct.usage.completion_tokens
    assert message.usage_metadata["input_tokens"] == direct.usage.prompt_tokens
    assert 0 < message.usage_metadata["output_tokens"] <= MAX_ANSWER_TOKENS


def test_langchain_stream_rebuilds_the_invoke_answer(target: Target) -> None:
    model = chat_model(target)
    whole = model.invoke(QUESTION)
    chunks = list(model.stream(QUESTION))
    assert len(chunks) > 1
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == whole.content
    assert merged.content
    assert merged.response_metadata["finish_reason"] == whole.response_metadata["finish_reason"]
    assert merged.usage_metadata is not None
    assert whole.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] == whole.usage_metadata["output_tokens"]


def test_langchain_forced_tool_runs(target: Target) -> None:
    cities: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        cities.append(city)
        return f"{WEATHER_REPORT} in {city}"

    model = chat_model(target, max_tokens=60).bind_tools([get_weather], tool_choice="get_weather")
    message = model.invoke(ASK_WEATHER)
    assert isinstance(message, AIMessage)
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert message.invalid_tool_calls == []
    [call] = message.tool_calls
    assert call["name"] == "get_weather"
    assert set(call["args"]) == {"city"}
    assert isinstance(call["args"]["city"], str)
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage)
    assert cities == [call["args"]["city"]]
    assert result.content == f"{WEATHER_REPORT} in {cities[0]}"
    assert result.tool_call_id == call["id"]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(
    target: Target, method: Literal["json_schema", "function_calling"]
) -> None:
    model = chat_model(target, max_tokens=MAX_STRUCTURED_TOKENS)
    structured = model.with_structured_output(Person, method=method, include_raw=True)
    result = structured.invoke(PERSON_PROMPT)
    assert isinstance(result, dict)
    assert result["parsing_error"] is None
    raw = result["raw"]
    assert isinstance(raw, AIMessage)
    if method == "json_schema":
        assert raw.response_metadata["finish_reason"] == "stop"
        assert isinstance(raw.content, str)
        assert_person(result["parsed"], without_repeated_keys(raw.content))
        return
    # langchain keeps only the parsed arguments of a call.
    assert raw.response_metadata["finish_reason"] == "tool_calls"
    assert raw.invalid_tool_calls == []
    [call] = raw.tool_calls
    assert call["name"] == "Person"
    assert_person(result["parsed"], call["args"])


# -- instructor -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [instructor.Mode.JSON_SCHEMA, instructor.Mode.TOOLS])
def test_instructor_extracts_a_bounded_nested_model(target: Target, mode: instructor.Mode) -> None:
    client = instructor.from_openai(
        openai.OpenAI(base_url=base_url(target), api_key="unused", max_retries=0), mode=mode
    )
    # max_retries=0: one attempt; a re-ask would hide a document the server let through.
    person, completion = client.chat.completions.create_with_completion(
        model=target.model,
        messages=[{"role": "user", "content": PERSON_PROMPT}],
        response_model=Person,
        max_retries=0,
        temperature=0,
        max_tokens=MAX_STRUCTURED_TOKENS,
    )
    assert isinstance(completion, ChatCompletion)
    [choice] = completion.choices
    if mode is instructor.Mode.JSON_SCHEMA:
        assert choice.finish_reason == "stop"
        assert choice.message.tool_calls is None
        raw_json = choice.message.content or ""
    else:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        [call] = choice.message.tool_calls
        assert call.type == "function"
        assert call.function.name == "Person"
        raw_json = call.function.arguments
    assert_person(person, without_repeated_keys(raw_json))


# -- openai-agents --------------------------------------------------------------------------


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

    client = openai.AsyncOpenAI(base_url=base_url(target), api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer questions about the weather with the get_weather tool.",
        model=OpenAIChatCompletionsModel(model=target.model, openai_client=client),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=60),
        tool_use_behavior="stop_on_first_tool",
    )
    try:
        result = await Runner.run(agent, ASK_WEATHER, max_turns=2)
    finally:
        await client.close()
    # The tool ran once, with the arguments the model produced, and its output ended the run.
    assert len(cities) == 1
    assert isinstance(cities[0], str)
    calls = [item for item in result.new_items if isinstance(item, ToolCallItem)]
    outputs = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert len(calls) == len(outputs) == 1
    raw_call: Any = calls[0].raw_item
    assert raw_call.name == "get_weather"
    assert without_repeated_keys(raw_call.arguments) == {"city": cities[0]}
    assert result.final_output == f"{WEATHER_REPORT} in {cities[0]}"
    assert outputs[0].output == result.final_output
