"""Ollama's API with the official `ollama` Python client, on real models, on both engines.

Chat and generate (streamed and not) with real timings and token counts that agree with the
OpenAI API's usage for the same greedy request; `format` with a pydantic model's schema; a tool
call; embeddings (GGUF; ONNX refuses); the model listing (list, ps, show); keep_alive 0
unloading the model; errors as ollama.ResponseError with the right status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import ollama
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import E2E_CONTEXT_LENGTH, ChatMessages, Target

QUESTION: ChatMessages = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 16}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
# A call-shaped answer: Ollama has no tool_choice, so `format` is how a client forces a call.
CALL_FORMAT = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": WEATHER_TOOL["function"]["parameters"],
    },
    "required": ["name", "arguments"],
}


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


@pytest.fixture
def client(target: Target) -> Iterator[ollama.Client]:
    with ollama.Client(host=target.server.base_url) as client:
        yield client


def assert_timings(response: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    assert response.done is True
    assert response.done_reason in ("stop", "length")
    for name in ("total_duration", "prompt_eval_duration", "eval_duration", "eval_count"):
        assert (getattr(response, name) or 0) > 0, name
    assert response.load_duration is not None
    assert response.total_duration is not None
    assert response.prompt_eval_duration is not None
    assert response.eval_duration is not None
    spent = response.load_duration + response.prompt_eval_duration + response.eval_duration
    assert response.total_duration >= spent


def test_chat_counts_agree_with_the_openai_api(client: ollama.Client, target: Target) -> None:
    response = client.chat(target.model, messages=QUESTION, options=GREEDY)
    assert response.message.role == "assistant"
    assert response.message.content
    assert response.model == target.model
    assert_timings(response)
    assert response.prompt_eval_count == target.count_prompt_tokens(QUESTION)
    same = target.client.chat.completions.create(
        model=target.model, messages=QUESTION, temperature=0, max_tokens=16
    )
    assert same.usage is not None
    assert response.eval_count == same.usage.completion_tokens
    assert response.message.content == same.choices[0].message.content


def test_chat_streamed(client: ollama.Client, target: Target) -> None:
    whole = client.chat(target.model, messages=QUESTION, options=GREEDY)
    parts = list(client.chat(target.model, messages=QUESTION, options=GREEDY, stream=True))
    assert len(parts) > 2
    assert all(part.done is False for part in parts[:-1])
    final = parts[-1]
    assert_timings(final)
    assert "".join(part.message.content or "" for part in parts) == whole.message.content
    assert (final.prompt_eval_count, final.eval_count) == (
        whole.prompt_eval_count,
        whole.eval_count,
    )


def test_generate(client: ollama.Client, target: Target) -> None:
    response = client.generate(
        target.model, prompt="What is the capital of France?", options=GREEDY
    )
    assert response.response
    assert_timings(response)
    assert response.prompt_eval_count == target.count_prompt_tokens(QUESTION)
    streamed = list(
        client.generate(
            target.model, prompt="1, 2, 3, 4, 5,", raw=True, stream=True, options=GREEDY
        )
    )
    text = "".join(part.response or "" for part in streamed)
    assert text.startswith(" 6"), text
    assert_timings(streamed[-1])


def test_format_with_a_pydantic_schema(client: ollama.Client, target: Target) -> None:
    messages = [{"role": "user", "content": "Give me a person as JSON."}]
    response = client.chat(
        target.model,
        messages=messages,
        format=Person.model_json_schema(),
        options={"temperature": 0, "num_predict": 64},
    )
    assert response.done_reason == "stop"
    person = Person.model_validate_json(response.message.content or "")
    assert person.name


def test_tool_call(client: ollama.Client, target: Target) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    response = client.chat(
        target.model,
        messages=messages,
        tools=[WEATHER_TOOL],
        format=CALL_FORMAT,
        options={"temperature": 0, "num_predict": 64},
    )
    assert response.message.tool_calls, response.message
    (call,) = response.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments["city"], str)
    assert response.message.content == ""
    # The call goes back as history with its result; the model answers in text.
    followup: list[Mapping[str, Any] | ollama.Message] = [
        *messages,
        response.message,
        {"role": "tool", "content": "Sunny, 24 C", "tool_name": "get_weather"},
    ]
    answer = client.chat(target.model, messages=followup, options=GREEDY)
    assert answer.message.content or answer.message.tool_calls


def test_tool_call_or_text_unforced(client: ollama.Client, target: Target) -> None:
    """Without `format` the model decides; a 135M model may answer in text. Either is whole."""
    response = client.chat(
        target.model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        options={"temperature": 0, "num_predict": 48},
    )
    if response.message.tool_calls:
        assert response.message.tool_calls[0].function.name == "get_weather"
    else:
        assert response.message.content


def test_embed(client: ollama.Client, target: Target) -> None:
    if target.model.endswith("-onnx"):
        with pytest.raises(ollama.ResponseError) as refused:
            client.embed(target.model, input="hello")
        assert refused.value.status_code == 400
        assert "embedding" in refused.value.error
        return
    response = client.embed(target.model, input=["hello world", "goodbye"])
    assert len(response.embeddings) == 2
    for vector in response.embeddings:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    assert (response.prompt_eval_count or 0) >= 3
    assert (response.total_duration or 0) > 0
    legacy = client.embeddings(target.model, prompt="goodbye")
    assert legacy.embedding == pytest.approx(response.embeddings[1], abs=1e-5)


def test_list_ps_show(client: ollama.Client, target: Target) -> None:
    client.generate(target.model, prompt="Hi", options={"num_predict": 1})
    (listed,) = [m for m in client.list().models if m.model == target.model]
    assert (listed.size or 0) > 10_000_000
    assert len(listed.digest or "") == 64
    assert listed.details is not None
    assert listed.details.format == ("onnx" if target.model.endswith("-onnx") else "gguf")
    assert listed.details.family == "llama"
    assert listed.details.parameter_size == "135M"
    assert listed.modified_at is not None
    running = {m.model: m for m in client.ps().models}
    assert target.model in running
    assert (running[target.model].size or 0) > 10_000_000
    assert running[target.model].context_length == E2E_CONTEXT_LENGTH
    shown = client.show(f"{target.model}:latest")
    assert "<|im_start|>" in (shown.template or "")
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["slmserve.context_length"] == E2E_CONTEXT_LENGTH
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities
    assert f"num_ctx {E2E_CONTEXT_LENGTH}" in " ".join((shown.parameters or "").split())
    assert httpx.get(f"{target.server.base_url}/api/version").json()["version"]


def test_keep_alive_zero_unloads_the_model(client: ollama.Client, target: Target) -> None:
    client.generate(target.model, prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    deadline = time.monotonic() + 10
    while target.model in [m.model for m in client.ps().models]:
        assert time.monotonic() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.1)
    assert target.server.models()[target.model]["state"] == "unloaded"
    # The next request loads it again and says how long that took.
    reloaded = client.chat(target.model, messages=QUESTION, options=GREEDY)
    assert (reloaded.load_duration or 0) > 10_000_000  # a real load: over 10 ms
    assert target.server.models()[target.model]["state"] == "ready"
    # No prompt: a load request; keep_alive 0 with no prompt: an unload request.
    unloaded = client.generate(target.model, keep_alive=0)
    assert (unloaded.done, unloaded.done_reason) == (True, "unload")
    assert target.server.models()[target.model]["state"] == "unloaded"
    loaded = client.generate(target.model)
    assert (loaded.done, loaded.done_reason) == (True, "load")
    assert target.server.models()[target.model]["state"] == "ready"


def test_errors(client: ollama.Client, target: Target) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat("no-such-model", messages=QUESTION)
    assert unknown.value.status_code == 404
    assert target.model in unknown.value.error
    with pytest.raises(ollama.ResponseError) as too_long:
        client.chat(target.model, messages=QUESTION, options={"num_ctx": 2 * E2E_CONTEXT_LENGTH})
    assert too_long.value.status_code == 400
    assert "num_ctx" in too_long.value.error
    with pytest.raises(ollama.ResponseError) as pull:
        client.pull(target.model)
    assert pull.value.status_code == 400
    assert "models.yaml" in pull.value.error
