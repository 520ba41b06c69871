"""Chat completions on real models through the official openai client."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.e2e.conftest import E2E_CONTEXT_LENGTH, ChatMessages, Target
from tests.sse import sse_chunks, streamed_text

QUESTION: ChatMessages = [{"role": "user", "content": "What are the three primary colours?"}]


def stream_chunks(
    target: Target, messages: ChatMessages = QUESTION, **fields: Any
) -> list[ChatCompletionChunk]:
    stream = target.client.chat.completions.create(
        model=target.model, messages=messages, stream=True, **fields
    )
    return list(stream)


def complete(target: Target, messages: ChatMessages = QUESTION, **fields: Any) -> ChatCompletion:
    completion: ChatCompletion = target.client.chat.completions.create(
        model=target.model, messages=messages, **fields
    )
    return completion


def chunk_text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_non_stream_answer(target: Target) -> None:
    completion = complete(target, max_tokens=48)
    assert completion.object == "chat.completion"
    assert completion.model == target.model
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_stream_answer(target: Target) -> None:
    chunks = stream_chunks(target, max_tokens=24)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunk_text(chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.id == chunks[0].id for c in chunks)


def test_greedy_stream_equals_non_stream(target: Target) -> None:
    completion = complete(target, max_tokens=40, temperature=0)
    chunks = stream_chunks(target, max_tokens=40, temperature=0)
    assert chunk_text(chunks) == completion.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason


def test_usage_counts_are_the_tokenizers(target: Target) -> None:
    messages: ChatMessages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Describe a cat."},
    ]
    expected_prompt = target.count_prompt_tokens(messages)
    chunks = stream_chunks(
        target, messages, max_tokens=30, temperature=0, stream_options={"include_usage": True}
    )
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == expected_prompt
    # Plain-ASCII output: every generated token carries text, so one content chunk per token.
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    text = chunk_text(chunks)
    assert text.isascii()
    assert usage.completion_tokens == len(content_chunks)


def test_max_tokens_gives_length(target: Target) -> None:
    essay: ChatMessages = [{"role": "user", "content": "Write a long essay about the ocean."}]
    completion = complete(target, essay, max_tokens=9, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 9


def test_stop_ends_before_the_stop_string(target: Target) -> None:
    messages: ChatMessages = [{"role": "user", "content": "Count from 1 to 10 with commas."}]
    full = complete(target, messages, max_tokens=40, temperature=0).choices[0].message.content
    assert full
    assert "4" in full
    expected = full[: full.index("4")]
    stop = ["4", "never-appears"]
    completion = complete(target, messages, max_tokens=40, temperature=0, stop=stop)
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    chunks = stream_chunks(target, messages, max_tokens=40, temperature=0, stop=stop)
    assert chunk_text(chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_usage_chunk_with_include_usage(target: Target) -> None:
    chunks = stream_chunks(target, max_tokens=5, stream_options={"include_usage": True})
    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 5
    assert all(c.usage is None for c in content)
    assert content[-1].choices[0].finish_reason == "length"


def test_unknown_model_is_not_found(target: Target) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        target.client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert caught.value.code == "model_not_found"
    assert target.model in caught.value.message


def test_too_long_prompt_is_context_length_exceeded(target: Target) -> None:
    long_text = "word " * (E2E_CONTEXT_LENGTH + 50)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            target.client.chat.completions.create(
                model=target.model,
                messages=[{"role": "user", "content": long_text}],
                stream=stream,
            )
        assert caught.value.code == "context_length_exceeded"


def test_raw_sse_bytes(target: Target) -> None:
    body = {
        "model": target.model,
        "messages": QUESTION,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    raw = b""
    url = f"{target.server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        for data in response.iter_bytes():
            raw += data
    text = raw.decode()
    assert "\r" not in text
    assert text.startswith('data: {"id":"chatcmpl-')
    assert text.endswith("data: [DONE]\n\n")
    chunks = sse_chunks(text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert streamed_text(chunks)


def test_disconnect_mid_stream_frees_the_model_at_once(target: Target) -> None:
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": "Write a very long story about dragons."}],
        "max_tokens": 900,
        "stream": True,
    }
    url = f"{target.server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)
    # The model has one slot: if the abandoned stream still held it, this would wait for
    # hundreds of tokens. It must be answered at once.
    started = time.monotonic()
    completion = complete(target, max_tokens=4)
    assert completion.choices[0].finish_reason == "length"
    assert time.monotonic() - started < 5
    card = target.server.models()[target.model]
    assert (card["running"], card["waiting"]) == (0, 0)
