"""POST /v1/completions over the fake engine."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.conftest import FAKE_MODEL, FakeServer
from tests.sse import sse_chunks

URL = "/v1/completions"


def completion(prompt: Any = "SAY:hello world", **fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "prompt": prompt, **fields}


async def test_non_stream(server: FakeServer) -> None:
    body = (await server.client.post(URL, json=completion())).json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice == {"text": "hello world", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert body["usage"]["completion_tokens"] == 4
    request = server.worker().submitted[-1]
    assert (request.prompt, request.messages, request.max_tokens) == ("SAY:hello world", (), 16)


async def test_prompts_list_with_n(server: FakeServer) -> None:
    body = completion(["SAY:one", "SAY:two"], n=2)
    result = (await server.client.post(URL, json=body)).json()
    texts = [(c["index"], c["text"]) for c in result["choices"]]
    assert texts == [(0, "one"), (1, "one"), (2, "two"), (3, "two")]
    # Each prompt counted once (one word each for the fake), every choice's tokens counted.
    assert result["usage"]["prompt_tokens"] == 2
    assert result["usage"]["completion_tokens"] == 4


async def test_stream_with_echo_and_usage(server: FakeServer) -> None:
    body = completion("SAY:abcdef", stream=True, echo=True, stream_options={"include_usage": True})
    chunks = sse_chunks((await server.client.post(URL, json=body)).text)
    assert all(c["object"] == "text_completion" for c in chunks)
    *streamed, usage = chunks
    assert "".join(c["choices"][0]["text"] for c in streamed) == "SAY:abcdefabcdef"
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_integer_logprobs(server: FakeServer, stream: bool) -> None:
    response = await server.client.post(
        URL, json=completion("SAY:abcdef", logprobs=2, stream=stream)
    )
    if stream:
        parts = [c["choices"][0]["logprobs"] for c in sse_chunks(response.text)]
        tokens = [t for part in parts if part for t in part["tokens"]]
        offsets = [o for part in parts if part for o in part["text_offset"]]
        tops = [t for part in parts if part for t in part["top_logprobs"]]
    else:
        logprobs = response.json()["choices"][0]["logprobs"]
        tokens, offsets, tops = (
            logprobs["tokens"],
            logprobs["text_offset"],
            logprobs["top_logprobs"],
        )
        assert logprobs["token_logprobs"] == [-0.25, -0.25]
    assert tokens == ["abc", "def"]
    assert offsets == [0, 3]
    assert tops == [{"t0": -0.5, "t1": -1.0}] * 2


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": [1, 2], "suffix": "x"}, "suffix"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"best_of": 3}, "best_of"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_refusals(server: FakeServer, fields: dict[str, Any], param: str) -> None:
    response = await server.client.post(URL, json=completion(**fields))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
