"""Prompt log probabilities (/v1/completions echo + logprobs) and the prompt utility endpoints
(/tokenize, /detokenize, /apply-template, /tokenizer_info), on both engines, real models."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ChatMessages, Target

TEXT = "<|im_start|>user\nHéllo wörld, 日本語 text!<|im_end|>\n  two  spaces\tand a tab"
PROMPT = "Question: What is the capital of France?\nAnswer:"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def post(target: Target, path: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{target.server.base_url}{path}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_tokenize_detokenize_round_trip(target: Target) -> None:
    tokens = post(target, "/tokenize", model=target.model, prompt=TEXT, with_pieces=True)
    assert tokens["count"] == len(tokens["tokens"]) > 10
    assert tokens["max_model_len"] == 1024
    assert tokens["pieces"][0] == "<|im_start|>"
    text = post(target, "/detokenize", model=target.model, tokens=tokens["tokens"])
    assert text == {"prompt": TEXT}
    # Without `model` (the server serves one), as lm-evaluation-harness asks.
    again = post(target, "/tokenize", prompt=TEXT, add_special_tokens=False)
    assert again["tokens"] == tokens["tokens"]


@pytest.mark.parametrize("tools", [None, [WEATHER_TOOL]])
def test_applied_template_has_the_chat_prompt_tokens(
    target: Target, tools: list[dict[str, Any]] | None
) -> None:
    messages: ChatMessages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    rendered = post(target, "/apply-template", model=target.model, messages=messages, **extra)
    tokens = post(target, "/tokenize", model=target.model, prompt=rendered["prompt"])
    chat = target.client.chat.completions.create(
        model=target.model, messages=messages, max_tokens=1, **extra
    )
    assert chat.usage is not None
    assert tokens["count"] == chat.usage.prompt_tokens
    by_messages = post(target, "/tokenize", model=target.model, messages=messages, **extra)
    assert by_messages["tokens"] == tokens["tokens"]


def test_tokenizer_info(target: Target) -> None:
    response = httpx.get(f"{target.server.base_url}/tokenizer_info", timeout=30)
    info = response.json()
    assert info["model"] == target.model
    assert info["eos_token"]
    assert info["max_model_len"] == 1024


def test_echo_with_logprobs_scores_the_prompt(target: Target) -> None:
    completion = target.client.completions.create(
        model=target.model, prompt=PROMPT, echo=True, logprobs=2, max_tokens=3, temperature=0
    )
    [choice] = completion.choices
    assert completion.usage is not None
    logprobs = choice.logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None
    assert logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None
    assert logprobs.text_offset is not None
    prompt_tokens = completion.usage.prompt_tokens
    generated = completion.usage.completion_tokens
    # The end-of-text token is listed too when the model ended the text (no stop strings here).
    ended = 1 if choice.finish_reason == "stop" else 0
    assert len(logprobs.tokens) == prompt_tokens + generated + ended
    assert logprobs.token_logprobs[0] is None
    assert logprobs.top_logprobs[0] is None
    assert all(value is not None and value <= 0 for value in logprobs.token_logprobs[1:])
    assert choice.text.startswith(PROMPT)
    # The continuation starts at the prompt's length, the prompt's tokens spell the prompt.
    if generated + ended:
        assert logprobs.text_offset[prompt_tokens] == len(PROMPT)
    assert "".join(logprobs.tokens[:prompt_tokens]) == PROMPT
    listed = zip(logprobs.tokens, logprobs.text_offset, strict=True)
    for token, offset in list(listed)[: prompt_tokens + generated]:
        assert choice.text[offset : offset + len(token)] == token

    # max_tokens 0: the same prompt scores, nothing generated.
    scored = target.client.completions.create(
        model=target.model, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0, temperature=0
    )
    only = scored.choices[0]
    assert only.text == PROMPT
    assert only.finish_reason == "length"
    assert only.logprobs is not None
    assert only.logprobs.token_logprobs == pytest.approx(
        logprobs.token_logprobs[:prompt_tokens], abs=1e-4
    )


def test_token_id_prompts_score_like_text(target: Target) -> None:
    ids = post(target, "/tokenize", model=target.model, prompt=PROMPT)["tokens"]
    by_ids = target.client.completions.create(
        model=target.model, prompt=[ids], echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    by_text = target.client.completions.create(
        model=target.model, prompt=PROMPT, echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    first, second = by_ids.choices[0].logprobs, by_text.choices[0].logprobs
    assert first is not None
    assert second is not None
    assert first.token_logprobs == pytest.approx(second.token_logprobs, abs=1e-4)


def test_streamed_echo_with_logprobs(target: Target) -> None:
    chunks = list(
        target.client.completions.create(
            model=target.model,
            prompt=PROMPT,
            echo=True,
            logprobs=1,
            max_tokens=2,
            temperature=0,
            stream=True,
        )
    )
    first = chunks[0].choices[0]
    assert first.text == PROMPT
    assert first.logprobs is not None
    assert first.logprobs.token_logprobs is not None
    assert first.logprobs.token_logprobs[0] is None
    assert first.logprobs.text_offset is not None
    assert first.logprobs.text_offset[0] == 0


def test_bad_requests(target: Target) -> None:
    base = target.server.base_url
    unknown = httpx.post(f"{base}/tokenize", json={"model": "nope", "prompt": "x"}, timeout=30)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    bad = httpx.post(f"{base}/detokenize", json={"tokens": [10**8]}, timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "tokens"
    no_echo = httpx.post(
        f"{base}/v1/completions",
        json={"model": target.model, "prompt": "x", "max_tokens": 0},
        timeout=30,
    )
    assert no_echo.status_code == 400
    assert no_echo.json()["error"]["param"] == "max_tokens"
