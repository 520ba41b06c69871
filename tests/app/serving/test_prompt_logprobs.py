"""/v1/completions with echo and logprobs (prompt log probabilities), on the fake engine."""

from __future__ import annotations

from typing import Any

from tests.app.conftest import FAKE_MODEL, FakeServer
from tests.sse import sse_chunks

URL = "/v1/completions"
PROMPT = "SAY:abcdef and more"


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "prompt": PROMPT, "echo": True, "logprobs": 1, **fields}


async def test_prompt_tokens_come_first_with_a_null_first_entry(server: FakeServer) -> None:
    body = (await server.client.post(URL, json=completion(max_tokens=2))).json()
    [choice] = body["choices"]
    logprobs = choice["logprobs"]
    assert choice["text"] == PROMPT + "abcdef"
    # Three prompt words (the first with no log probability), then two generated tokens.
    assert logprobs["tokens"] == ["SAY:abcdef", " and", " more", "abc", "def"]
    assert logprobs["token_logprobs"] == [None, -1.0, -1.0, -0.25, -0.25]
    assert logprobs["top_logprobs"][0] is None
    assert logprobs["top_logprobs"][1] == {"a0": -0.5}
    # Offsets into the returned text: the continuation starts where the prompt ends.
    assert logprobs["text_offset"] == [0, 10, 14, len(PROMPT), len(PROMPT) + 3]
    assert server.worker().submitted[-1].prompt_logprobs == 1


async def test_max_tokens_zero_scores_the_prompt_only(server: FakeServer) -> None:
    body = (await server.client.post(URL, json=completion(max_tokens=0))).json()
    [choice] = body["choices"]
    assert choice["text"] == PROMPT
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"] == [None, -1.0, -1.0]
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == 3


async def test_echo_without_logprobs_asks_for_no_prompt_logprobs(server: FakeServer) -> None:
    body = (await server.client.post(URL, json=completion(logprobs=None, max_tokens=0))).json()
    assert body["choices"][0]["text"] == PROMPT
    assert body["choices"][0]["logprobs"] is None
    assert server.worker().submitted[-1].prompt_logprobs is None


async def test_stream_sends_the_scored_prompt_first(server: FakeServer) -> None:
    response = await server.client.post(URL, json=completion(max_tokens=1, stream=True))
    chunks = sse_chunks(response.text)
    first = chunks[0]["choices"][0]
    assert first["text"] == PROMPT
    assert first["logprobs"]["token_logprobs"] == [None, -1.0, -1.0]
    assert first["logprobs"]["text_offset"] == [0, 10, 14]
    second = chunks[1]["choices"][0]
    assert second["text"] == "abc"
    assert second["logprobs"]["text_offset"] == [len(PROMPT)]


async def test_token_id_prompts_echo_their_decoded_text(server: FakeServer) -> None:
    # The fake tokenizer learns words in order: tokenize first so the ids mean something.
    tokens = (await server.client.post("/tokenize", json={"prompt": "SAY:xy z"} | MODEL)).json()
    body = (
        await server.client.post(URL, json=completion(prompt=tokens["tokens"], max_tokens=0))
    ).json()
    assert body["choices"][0]["text"] == "SAY:xy z"
    request = server.worker().submitted[-1]
    assert (request.prompt, request.prompt_ids) == (None, tuple(tokens["tokens"]))
    batch = completion(prompt=[tokens["tokens"], tokens["tokens"][:1]], max_tokens=0)
    texts = [c["text"] for c in (await server.client.post(URL, json=batch)).json()["choices"]]
    assert texts == ["SAY:xy z", "SAY:xy"]


MODEL = {"model": FAKE_MODEL}
