"""/tokenize, /detokenize, /apply-template and /tokenizer_info over the fake engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.app.conftest import FAKE_MODEL, FakeServer


def body(**fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, **fields}


async def test_tokenize_then_detokenize_round_trips(server: FakeServer) -> None:
    answer = (
        await server.client.post("/tokenize", json=body(prompt="one two one", with_pieces=True))
    ).json()
    assert answer["tokens"] == [0, 1, 0]
    assert answer["count"] == 3
    assert answer["max_model_len"] == 64  # the fake engine's context length
    assert answer["pieces"] == ["one", "two", "one"]
    text = (await server.client.post("/detokenize", json=body(tokens=answer["tokens"]))).json()
    assert text == {"prompt": "one two one"}


async def test_pieces_only_when_asked(server: FakeServer) -> None:
    answer = (await server.client.post("/tokenize", json=body(prompt="a b"))).json()
    assert set(answer) == {"tokens", "count", "max_model_len"}


async def test_messages_render_like_a_chat_request(server: FakeServer) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    rendered = (await server.client.post("/apply-template", json=body(messages=messages))).json()
    assert rendered == {"prompt": "hello there"}
    tokens = (await server.client.post("/tokenize", json=body(messages=messages))).json()
    chat = await server.client.post(
        "/v1/chat/completions", json=body(messages=messages, max_tokens=1)
    )
    assert tokens["count"] == chat.json()["usage"]["prompt_tokens"]


async def test_model_may_be_left_out_only_with_one_model(server: FakeServer) -> None:
    # The fake server serves two models: lm-evaluation-harness's request names none.
    response = await server.client.post("/tokenize", json={"prompt": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


async def test_tokenizer_info(server: FakeServer) -> None:
    info = (await server.client.get("/tokenizer_info", params={"model": FAKE_MODEL})).json()
    assert info == {"model": FAKE_MODEL, "eos_token": "</s>", "max_model_len": 64}


@pytest.mark.parametrize(
    ("path", "fields", "status", "param"),
    [
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/tokenize", body(), 400, "prompt"),
        ("/tokenize", body(prompt="x", messages=[{"role": "user", "content": "y"}]), 400, "prompt"),
        ("/tokenize", body(prompt="\ud800"), 400, "prompt"),
        ("/detokenize", body(tokens=[99999]), 400, "tokens"),
        ("/detokenize", body(tokens="abc"), 400, "tokens"),
        ("/apply-template", body(messages=[]), 400, "messages"),
        ("/tokenize", body(messages=[]), 400, "messages"),
        ("/apply-template", body(), 400, "messages"),
    ],
)
async def test_errors_in_openai_envelope(
    server: FakeServer, path: str, fields: dict[str, Any], status: int, param: str
) -> None:
    # JSON escapes a lone surrogate as \ud800, as a client may send it.
    raw = json.dumps(fields)
    response = await server.client.post(
        path, content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
