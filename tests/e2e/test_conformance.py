"""OpenAI API conformance with the official Python SDK, on real models, on both engines.

Completions, n, logprobs, JSON output, tools, extra sampling parameters and embeddings, in
stream and non-stream form; where an engine cannot do something, the exact 400.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import ChatMessages, Target

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PERSON_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER: ChatMessages = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON_QUESTION: ChatMessages = [{"role": "user", "content": "Give me a person as JSON."}]


def test_completions(target: Target) -> None:
    completion = target.client.completions.create(
        model=target.model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.object == "text_completion"
    [choice] = completion.choices
    assert choice.text
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 8
    stream = target.client.completions.create(
        model=target.model,
        prompt="The capital of France is",
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == choice.text
    echoed = target.client.completions.create(
        model=target.model, prompt="Once upon", max_tokens=3, echo=True, temperature=0
    )
    assert echoed.choices[0].text.startswith("Once upon")


def test_completion_logprobs_and_prompt_lists(target: Target) -> None:
    completion = target.client.completions.create(
        model=target.model, prompt=["One", "Two"], max_tokens=4, n=2, logprobs=2, temperature=0
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens
    assert logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def test_suffix_is_refused_without_fill_in_the_middle(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        target.client.completions.create(model=target.model, prompt="def f(", suffix="):\n")
    assert caught.value.param == "suffix"


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices(target: Target, stream: bool) -> None:
    fields: dict[str, Any] = {"model": target.model, "messages": ASK_WEATHER, "max_tokens": 6}
    fields.update(n=2, temperature=0.9, seed=3)
    if not stream:
        completion = target.client.chat.completions.create(**fields)
        assert [choice.index for choice in completion.choices] == [0, 1]
        assert all(choice.message.content for choice in completion.choices)
        return
    indexes = {
        choice.index
        for chunk in target.client.chat.completions.create(stream=True, **fields)
        for choice in chunk.choices
    }
    assert indexes == {0, 1}


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs(target: Target, stream: bool) -> None:
    fields: dict[str, Any] = {"model": target.model, "messages": ASK_WEATHER, "max_tokens": 5}
    fields.update(logprobs=True, top_logprobs=3, temperature=0)
    if stream:
        entries = [
            entry
            for chunk in target.client.chat.completions.create(stream=True, **fields)
            for choice in chunk.choices
            if choice.logprobs and choice.logprobs.content
            for entry in choice.logprobs.content
        ]
    else:
        completion = target.client.chat.completions.create(**fields)
        logprobs = completion.choices[0].logprobs
        assert logprobs is not None
        assert logprobs.content is not None
        entries = logprobs.content
    assert len(entries) == 5
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.bytes is not None
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output(target: Target, stream: bool) -> None:
    fields: dict[str, Any] = {
        "model": target.model,
        "messages": PERSON_QUESTION,
        "max_tokens": 80,
        "response_format": PERSON_FORMAT,
        "temperature": 0,
    }
    if stream:
        chunks = list(target.client.chat.completions.create(stream=True, **fields))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = target.client.chat.completions.create(**fields).choices[0].message.content or ""
    jsonschema.validate(json.loads(text), PERSON)


def test_twenty_structured_generations_all_validate(target: Target) -> None:
    for seed in range(20):
        completion = target.client.chat.completions.create(
            model=target.model,
            messages=PERSON_QUESTION,
            max_tokens=80,
            response_format=PERSON_FORMAT,
            temperature=0.9,
            seed=seed,
        )
        text = completion.choices[0].message.content or ""
        assert completion.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_output(target: Target) -> None:
    completion = target.client.chat.completions.create(
        model=target.model,
        messages=[
            {
                "role": "user",
                "content": 'Give a JSON object with the key "colour" and a colour as its value.',
            }
        ],
        max_tokens=60,
        response_format={"type": "json_object"},
        temperature=0,
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_call(target: Target, tool_choice: Any) -> None:
    completion = target.client.chat.completions.create(
        model=target.model,
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        max_tokens=60,
        temperature=0,
    )
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def test_forced_tool_call_through_the_sdk_stream_helper(target: Target) -> None:
    """The SDK's own accumulator must rebuild the call from our streamed deltas."""
    with target.client.chat.completions.stream(
        model=target.model,
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_auto_tool_choice_and_tool_results_in_the_history(target: Target) -> None:
    completion = target.client.chat.completions.create(
        model=target.model, messages=ASK_WEATHER, tools=[WEATHER_TOOL], max_tokens=60, temperature=0
    )
    [choice] = completion.choices
    # With "auto" the model decides: either a valid call or an ordinary answer.
    if choice.finish_reason == "tool_calls":
        assert choice.message.tool_calls
    else:
        assert choice.message.content
    history: Any = [
        *ASK_WEATHER,
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
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    answer = target.client.chat.completions.create(
        model=target.model, messages=history, tools=[WEATHER_TOOL], max_tokens=20
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_extra_sampling_parameters(target: Target) -> None:
    first = target.client.chat.completions.create(
        model=target.model, messages=ASK_WEATHER, max_tokens=1, temperature=0
    )
    assert first.choices[0].logprobs is None
    completion = target.client.chat.completions.create(
        model=target.model,
        messages=ASK_WEATHER,
        max_tokens=4,
        temperature=0.7,
        seed=5,
        logit_bias={"1178": 100},
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    # A +100 bias on token 1178 makes it every token.
    assert completion.choices[0].message.content
    again = target.client.chat.completions.create(
        model=target.model,
        messages=ASK_WEATHER,
        max_tokens=4,
        temperature=0.7,
        seed=5,
        logit_bias={"1178": 100},
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert again.choices[0].message.content == completion.choices[0].message.content


def test_embeddings(target: Target) -> None:
    texts = ["The cat sits on the mat.", "A kitten rests on a rug.", "Revenue grew 12%."]
    if target.model.endswith("onnx"):
        with pytest.raises(openai.BadRequestError) as caught:
            target.client.embeddings.create(model=target.model, input=texts)
        assert "cannot produce embeddings" in caught.value.message
        return
    # The SDK asks for base64 and decodes it: both encodings are exercised.
    result = target.client.embeddings.create(model=target.model, input=texts)
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1, 2]
    assert result.usage.prompt_tokens > 0

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert all(abs(cosine(v, v) - 1) < 1e-4 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    floats = target.client.embeddings.create(
        model=target.model, input=texts[0], encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
