"""POST /v1/chat/completions over the fake engine: the OpenAI wire format, exactly."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.app.conftest import FAKE_MODEL, FakeServer
from tests.fakes import FAIL_MARKER, FAKE_CONTEXT_LENGTH
from tests.sse import sse_chunks, sse_payloads, streamed_text

URL = "/v1/chat/completions"


def chat(content: str = "one two three", **fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **fields}


def assert_error(response: Any, status: int, *, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


async def test_non_stream_completion(server: FakeServer) -> None:
    response = await server.client.post(URL, json=chat("one two three"))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == FAKE_MODEL
    [choice] = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "three two one", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert body["usage"]["prompt_tokens"] == 3
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == 6


async def test_stream_framing(server: FakeServer) -> None:
    response = await server.client.post(URL, json=chat("one two three", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response.text)
    first, *middle, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"] for c in middle] == [
        {"content": "three"},
        {"content": " two"},
        {"content": " one"},
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in [first, *middle])
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in c for c in chunks)


async def test_stream_text_equals_non_stream_text(server: FakeServer) -> None:
    plain = await server.client.post(URL, json=chat("a b c d e f"))
    streamed = await server.client.post(URL, json=chat("a b c d e f", stream=True))
    assert (
        streamed_text(sse_chunks(streamed.text)) == plain.json()["choices"][0]["message"]["content"]
    )


async def test_stream_include_usage(server: FakeServer) -> None:
    response = await server.client.post(
        URL, json=chat("one two", stream=True, stream_options={"include_usage": True})
    )
    chunks = sse_chunks(response.text)
    *content_chunks, finish, usage = chunks
    assert all(c["usage"] is None for c in [*content_chunks, finish])
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"]["prompt_tokens"] == 2
    assert usage["usage"]["completion_tokens"] == 2
    assert usage["usage"]["total_tokens"] == 4


async def test_max_tokens_gives_length(server: FakeServer) -> None:
    response = await server.client.post(URL, json=chat("a b c d e", max_tokens=2))
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "e d"
    assert body["usage"]["completion_tokens"] == 2


async def test_max_completion_tokens_wins_over_max_tokens(server: FakeServer) -> None:
    response = await server.client.post(
        URL, json=chat("a b c d e", max_tokens=4, max_completion_tokens=1)
    )
    assert response.json()["choices"][0]["message"]["content"] == "e"


@pytest.mark.parametrize(("stop", "expected"), [("c", "e d "), (["zz", " c"], "e d")])
async def test_stop_ends_before_the_stop_string(
    server: FakeServer, stop: Any, expected: str
) -> None:
    for stream in (False, True):
        response = await server.client.post(URL, json=chat("a b c d e", stop=stop, stream=stream))
        if stream:
            text = streamed_text(sse_chunks(response.text))
            finish = sse_chunks(response.text)[-1]["choices"][0]["finish_reason"]
        else:
            text = response.json()["choices"][0]["message"]["content"]
            finish = response.json()["choices"][0]["finish_reason"]
        assert text == expected
        assert finish == "stop"


async def test_error_mid_stream_is_an_error_chunk_then_done(server: FakeServer) -> None:
    response = await server.client.post(URL, json=chat(f"x y {FAIL_MARKER} z", stream=True))
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    chunks = sse_chunks(response.text)
    assert streamed_text(chunks[:-1]) == "z FAIL_AFTER_2"
    error = chunks[-1]
    assert set(error) == {"error"}
    assert error["error"]["type"] == "server_error"
    assert error["error"]["message"] == "the fake engine failed"
    assert payloads[-1] == "[DONE]"


async def test_error_before_any_token_non_stream_is_500(server: FakeServer) -> None:
    # The fake fails after two tokens; a non-stream request surfaces that as an HTTP error.
    response = await server.client.post(URL, json=chat(f"x {FAIL_MARKER}"))
    assert_error(response, 500, code="engine_error")


async def test_unknown_model_is_404_listing_models(server: FakeServer) -> None:
    for stream in (False, True):
        response = await server.client.post(
            URL, json={**chat(), "model": "gpt-4", "stream": stream}
        )
        error = assert_error(response, 404, code="model_not_found")
        assert error["param"] == "model"
        assert "fake-chat" in error["message"]
        assert "fake-other" in error["message"]


async def test_context_length_exceeded_is_400(server: FakeServer) -> None:
    too_long = " ".join(["w"] * (FAKE_CONTEXT_LENGTH + 1))
    for stream in (False, True):
        response = await server.client.post(URL, json=chat(too_long, stream=stream))
        assert_error(response, 400, code="context_length_exceeded")
    response = await server.client.post(URL, json=chat("a b", max_tokens=FAKE_CONTEXT_LENGTH))
    error = assert_error(response, 400, code="context_length_exceeded")
    assert f"maximum context length is {FAKE_CONTEXT_LENGTH} tokens" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": FAKE_MODEL}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (chat(messages=[]), "messages"),
        (chat(temperature="hot"), "temperature"),
        (chat(temperature=3), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(stream="yes please"), "stream"),
        (chat(stop=["a"] * 17), "stop"),
        ({**chat(), "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({**chat(), "messages": "hello"}, "messages"),
    ],
)
async def test_invalid_body_is_400_in_the_envelope(
    server: FakeServer, body: dict[str, Any], param: str
) -> None:
    error = assert_error(await server.client.post(URL, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_malformed_json_is_400(server: FakeServer) -> None:
    response = await server.client.post(
        URL, content=b'{"model": "x", ', headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400)
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (rb'{"messages": [{"role": "user", "content": "hi \ud800 there"}]}', "messages[0].content"),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\udfff"]}', "stop[0]"),
        (
            rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]}',
            "messages[0].content[0].text",
        ),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "user": "\ud83d"}', "user"),
        # A key that is no text is named with its surrogate escaped (the name must print).
        (rb'{"messages": [{"role": "user", "content": "hi"}], "x\ud800": 1}', r"x\ud800"),
    ],
)
async def test_text_that_is_not_unicode_is_400_naming_the_field(
    server: FakeServer, body: bytes, param: str
) -> None:
    """JSON can escape lone UTF-16 surrogates; they are no text, and no tokenizer sees them."""
    body = body.replace(b"{", b'{"model": "' + FAKE_MODEL.encode() + b'", ', 1)
    response = await server.client.post(
        URL, content=body, headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400)
    assert error["param"] == param
    assert "not valid Unicode" in error["message"]
    assert server.worker().submitted == [], "refused before reaching the engine"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_known_unsupported_fields_are_refused(
    server: FakeServer, fields: dict[str, Any], param: str
) -> None:
    error = assert_error(await server.client.post(URL, json=chat(**fields)), 400)
    assert error["param"] == param


async def test_defaults_of_unsupported_fields_are_fine(server: FakeServer) -> None:
    response = await server.client.post(
        URL,
        json=chat(
            n=1, logprobs=False, tools=[], tool_choice="none", response_format={"type": "text"}
        ),
    )
    assert response.status_code == 200


async def test_non_text_content_part_is_refused(server: FakeServer) -> None:
    parts = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": parts}]}
    error = assert_error(await server.client.post(URL, json=body), 400)
    assert error["param"] == "messages[0].content[0]"


async def test_text_parts_and_roles_reach_the_engine(server: FakeServer) -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "assistant", "content": None},
        {
            "role": "user",
            "content": [{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}],
        },
    ]
    response = await server.client.post(URL, json={"model": FAKE_MODEL, "messages": messages})
    assert response.json()["choices"][0]["message"]["content"] == "c b a"
    request = server.worker().submitted[-1]
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "be brief"),
        ("system", "sys"),
        ("assistant", ""),
        ("user", "a b\nc"),
    ]


async def test_sampling_fields_reach_the_engine(server: FakeServer) -> None:
    await server.client.post(
        URL,
        json=chat(
            temperature=0.5,
            top_p=0.9,
            seed=7,
            presence_penalty=0.1,
            frequency_penalty=0.2,
            top_k=5,
            min_p=0.05,
            repetition_penalty=1.1,
            stop="x",
            max_tokens=9,
            user="u1",
        ),
    )
    request = server.worker().submitted[-1]
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.5, 0.9, 7)
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.1, 0.2)
    assert (sampling.top_k, sampling.min_p, sampling.repetition_penalty) == (5, 0.05, 1.1)
    assert request.stop == ("x",)
    assert request.max_tokens == 9


async def test_unknown_fields_are_accepted_and_logged(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="slmserve.chat"):
        response = await server.client.post(URL, json=chat(frobnicate=True, vendor_extra={"a": 1}))
    assert response.status_code == 200
    assert "frobnicate, vendor_extra" in caplog.text


async def test_finished_requests_are_logged_without_their_content_by_default(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="slmserve.serving"):
        response = await server.client.post(URL, json=chat("secret words here"))
    assert response.status_code == 200
    assert "prompt_tokens=3" in caplog.text
    assert "completion_tokens=3" in caplog.text
    assert "secret" not in caplog.text, "prompts are the users' data: only with log_prompts"
