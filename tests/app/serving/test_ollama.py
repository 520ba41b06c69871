"""Ollama's API (/api/*) over the fake engine: NDJSON framing, shapes, options reaching the engine
request, format, tools, keep_alive, the model listing, and errors in Ollama's `{"error": ...}`."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.serving.ollama_models import read_gguf_header
from engines.base import JsonConstraint
from tests.app.conftest import FAKE_MODEL, OTHER_MODEL, FakeServer
from tests.fakes import FAIL_MARKER, SAY
from tests.metrics_text import value

CHAT = "/api/chat"
GENERATE = "/api/generate"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TIMINGS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def chat(content: str = "one two three", **fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **fields}


def lines(body: str) -> list[dict[str, Any]]:
    """The objects of an NDJSON body, asserting its framing: one JSON object per line."""
    assert body.endswith("\n"), body[-40:]
    return [json.loads(line) for line in body.split("\n")[:-1]]


def assert_final(final: dict[str, Any], *, prompt: int, completion: int, reason: str) -> None:
    assert final["done"] is True
    assert final["done_reason"] == reason
    assert all(isinstance(final[key], int) for key in TIMINGS), final
    assert (final["prompt_eval_count"], final["eval_count"]) == (prompt, completion)
    assert final["total_duration"] >= final["eval_duration"] > 0
    assert final["prompt_eval_duration"] > 0
    datetime.fromisoformat(final["created_at"])


async def test_chat_streams_ndjson_by_default(server: FakeServer) -> None:
    response = await server.client.post(CHAT, json=chat())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    objects = lines(response.text)
    pieces, final = objects[:-1], objects[-1]
    assert all(piece["done"] is False and piece["model"] == FAKE_MODEL for piece in pieces)
    assert all(piece["message"]["role"] == "assistant" for piece in pieces)
    assert "".join(piece["message"]["content"] for piece in pieces) == "three two one"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert_final(final, prompt=3, completion=3, reason="stop")
    assert final["load_duration"] == 0  # the model was warm


async def test_chat_not_streamed_is_one_object(server: FakeServer) -> None:
    response = await server.client.post(CHAT, json=chat(stream=False))
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["message"] == {"role": "assistant", "content": "three two one"}
    assert body["model"] == FAKE_MODEL
    assert_final(body, prompt=3, completion=3, reason="stop")


async def test_generate_streamed_and_not(server: FakeServer) -> None:
    request = {"model": FAKE_MODEL, "prompt": "one two three", "system": "be brief"}
    objects = lines((await server.client.post(GENERATE, json=request)).text)
    assert "".join(o["response"] for o in objects[:-1]) == "three two one"
    assert objects[-1]["response"] == ""
    assert_final(objects[-1], prompt=5, completion=3, reason="stop")  # system words count too
    sent = server.worker().submitted[-1]
    assert [(m.role, m.content) for m in sent.messages] == [
        ("system", "be brief"),
        ("user", "one two three"),
    ]
    body = (await server.client.post(GENERATE, json={**request, "stream": False})).json()
    assert body["response"] == "three two one"
    assert_final(body, prompt=5, completion=3, reason="stop")


async def test_generate_raw_is_a_raw_prompt(server: FakeServer) -> None:
    request = {"model": FAKE_MODEL, "prompt": "a b", "raw": True, "stream": False}
    assert (await server.client.post(GENERATE, json=request)).json()["response"] == "b a"
    sent = server.worker().submitted[-1]
    assert (sent.prompt, sent.messages) == ("a b", ())


async def test_options_reach_the_engine_request(server: FakeServer) -> None:
    options = {
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 42,
        "stop": ["END", "STOP"],
        "num_predict": 7,
        "num_ctx": 64,
        # Neutral or load-time options pass (clients send defaults).
        "mirostat": 0,
        "typical_p": 1.0,
        "num_gpu": 99,
        "num_thread": 2,
        "repeat_last_n": 64,
    }
    response = await server.client.post(CHAT, json=chat(stream=False, options=options))
    assert response.status_code == 200, response.text
    sent = server.worker().submitted[-1]
    sampling = sent.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (
        0.3,
        0.9,
        20,
        0.05,
    )
    assert (sampling.repetition_penalty, sampling.presence_penalty) == (1.1, 0.5)
    assert (sampling.frequency_penalty, sampling.seed) == (0.25, 42)
    assert (sent.stop, sent.max_tokens) == (("END", "STOP"), 7)


@pytest.mark.parametrize("no_limit", [-1, -2, 0])
async def test_num_predict_without_limit(server: FakeServer, no_limit: int) -> None:
    request = chat(stream=False, options={"num_predict": no_limit})
    assert (await server.client.post(CHAT, json=request)).status_code == 200
    assert server.worker().submitted[-1].max_tokens is None


async def test_num_predict_cuts_the_reply(server: FakeServer) -> None:
    request = chat(stream=False, options={"num_predict": 1})
    body = (await server.client.post(CHAT, json=request)).json()
    assert body["message"]["content"] == "three"
    assert_final(body, prompt=3, completion=1, reason="length")


async def test_num_ctx_above_the_model_context_is_refused(server: FakeServer) -> None:
    response = await server.client.post(CHAT, json=chat(options={"num_ctx": 65}))
    assert response.status_code == 400
    message = response.json()["error"]
    assert "num_ctx" in message
    assert "64" in message
    assert response.json() == {"error": message}


async def test_format_json_and_schema_constrain_generation(server: FakeServer) -> None:
    await server.client.post(CHAT, json=chat(stream=False, format="json"))
    assert server.worker().submitted[-1].constraint == JsonConstraint(param="format")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    await server.client.post(GENERATE, json={"model": FAKE_MODEL, "prompt": "x", "format": schema})
    assert server.worker().submitted[-1].constraint == JsonConstraint(json.dumps(schema), "format")
    await server.client.post(CHAT, json=chat(stream=False, format=""))
    assert server.worker().submitted[-1].constraint is None


async def test_tool_call_answer(server: FakeServer) -> None:
    request = chat(f"{SAY}{CALL_TEXT}", stream=False, tools=[WEATHER_TOOL])
    body = (await server.client.post(CHAT, json=request)).json()
    assert body["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    }
    assert body["done_reason"] == "stop"
    assert server.worker().submitted[-1].tools == (WEATHER_TOOL,)


async def test_tool_call_streamed_once_whole(server: FakeServer) -> None:
    request = chat(f"{SAY}{CALL_TEXT}", tools=[WEATHER_TOOL])
    objects = lines((await server.client.post(CHAT, json=request)).text)
    calls = [o["message"]["tool_calls"] for o in objects if "tool_calls" in o["message"]]
    assert calls == [[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]]
    assert all(o["message"]["content"] == "" for o in objects)
    assert objects[-1]["done"] is True


async def test_text_with_tools_streams_as_text(server: FakeServer) -> None:
    objects = lines((await server.client.post(CHAT, json=chat(tools=[WEATHER_TOOL]))).text)
    assert "".join(o["message"]["content"] for o in objects) == "three two one"
    assert not any("tool_calls" in o["message"] for o in objects)


async def test_tool_history_gets_call_ids(server: FakeServer) -> None:
    messages = [
        {"role": "user", "content": "weather in Paris"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "and so"},
    ]
    request = {"model": FAKE_MODEL, "messages": messages, "tools": [WEATHER_TOOL], "stream": False}
    assert (await server.client.post(CHAT, json=request)).status_code == 200
    sent = server.worker().submitted[-1].messages
    call = sent[1].tool_calls[0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert (sent[2].role, sent[2].tool_call_id) == ("tool", call["id"])


@pytest.mark.parametrize(
    ("path", "request_body", "param"),
    [
        (CHAT, chat(think=True), "think"),
        (CHAT, chat(options={"mirostat": 2}), "mirostat"),
        (CHAT, chat(options={"temperature": 9}), "temperature"),
        (CHAT, chat(keep_alive="soon"), "keep_alive"),
        (
            CHAT,
            {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x", "images": ["a"]}]},
            "images",
        ),
        (GENERATE, {"model": FAKE_MODEL, "prompt": "x", "images": ["aGk="]}, "images"),
        (GENERATE, {"model": FAKE_MODEL, "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
        (GENERATE, {"model": FAKE_MODEL, "prompt": "x", "context": [1, 2]}, "context"),
        (GENERATE, {"model": FAKE_MODEL, "prompt": "x", "raw": True, "system": "s"}, "system"),
    ],
)
async def test_refusals_are_400_in_ollama_shape(
    server: FakeServer, path: str, request_body: dict[str, Any], param: str
) -> None:
    response = await server.client.post(path, json=request_body)
    assert response.status_code == 400, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert param in body["error"]


async def test_unknown_model_and_route_are_404_in_ollama_shape(server: FakeServer) -> None:
    for path, request in ((CHAT, {**chat(), "model": "nope"}), ("/api/show", {"model": "nope"})):
        response = await server.client.post(path, json=request)
        assert response.status_code == 404
        assert "nope" in response.json()["error"]
        assert FAKE_MODEL in response.json()["error"]  # it lists what exists
    response = await server.client.get("/api/nothing-here")
    assert (response.status_code, list(response.json())) == (404, ["error"])


async def test_error_mid_stream_is_a_last_error_line(server: FakeServer) -> None:
    response = await server.client.post(CHAT, json=chat(f"a b c {FAIL_MARKER}"))
    objects = lines(response.text)
    assert objects[-1] == {"error": "the fake engine failed"}
    assert all(o["done"] is False for o in objects[:-1])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256-abc"),
    ],
)
async def test_model_management_is_refused(server: FakeServer, method: str, path: str) -> None:
    response = await server.client.request(method, path, json={"model": FAKE_MODEL})
    assert response.status_code == 400
    assert "models.yaml" in response.json()["error"]


async def test_latest_is_an_alias(server: FakeServer) -> None:
    request = chat(stream=False, model=f"{FAKE_MODEL}:latest")
    body = (await server.client.post(CHAT, json=request)).json()
    assert body["model"] == f"{FAKE_MODEL}:latest"
    assert body["message"]["content"] == "three two one"


async def _wait_unloaded(server: FakeServer, model: str) -> None:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        running = (await server.client.get("/api/ps")).json()["models"]
        if model not in [m["name"] for m in running]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} is still loaded")


async def test_keep_alive_zero_unloads_after_the_request(server: FakeServer) -> None:
    response = await server.client.post(CHAT, json=chat(stream=False, keep_alive=0))
    assert response.status_code == 200
    await _wait_unloaded(server, FAKE_MODEL)
    card = (await server.client.get(f"/v1/models/{FAKE_MODEL}")).json()
    assert card["state"] == "unloaded"
    assert card["keep_alive_s"] == -1  # the override ends with the unload
    # The next request loads it again, and says how long that took.
    body = (await server.client.post(CHAT, json=chat(stream=False))).json()
    assert body["load_duration"] > 0


async def test_keep_alive_sets_the_expiry(server: FakeServer) -> None:
    await server.client.post(CHAT, json=chat(stream=False, keep_alive="5m"))
    card = (await server.client.get(f"/v1/models/{FAKE_MODEL}")).json()
    assert card["keep_alive_s"] == 300
    running = {m["name"]: m for m in (await server.client.get("/api/ps")).json()["models"]}
    expires = datetime.fromisoformat(running[FAKE_MODEL]["expires_at"]).timestamp()
    assert 290 < expires - time.time() <= 300
    assert running[OTHER_MODEL]["expires_at"].startswith("9999")  # keep_alive -1: forever
    # A request without keep_alive: the configured one again.
    await server.client.post(CHAT, json=chat(stream=False))
    card = (await server.client.get(f"/v1/models/{FAKE_MODEL}")).json()
    assert card["keep_alive_s"] == -1


async def test_empty_prompt_loads_and_keep_alive_zero_unloads(server: FakeServer) -> None:
    unload = {"model": FAKE_MODEL, "keep_alive": 0, "stream": False}
    body = (await server.client.post(GENERATE, json=unload)).json()
    assert (body["done"], body["done_reason"], body["response"]) == (True, "unload", "")
    card = (await server.client.get(f"/v1/models/{FAKE_MODEL}")).json()
    assert card["state"] == "unloaded"
    response = await server.client.post(CHAT, json={"model": FAKE_MODEL})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    (loaded,) = lines(response.text)
    assert (loaded["done_reason"], loaded["message"]["content"]) == ("load", "")
    card = (await server.client.get(f"/v1/models/{FAKE_MODEL}")).json()
    assert card["state"] == "ready"


async def test_embed_and_legacy_embeddings(server: FakeServer) -> None:
    response = await server.client.post(
        "/api/embed", json={"model": FAKE_MODEL, "input": ["one two", "three"]}
    )
    body = response.json()
    assert len(body["embeddings"]) == 2
    assert all(len(vector) == 4 for vector in body["embeddings"])
    assert body["prompt_eval_count"] == 3
    assert body["total_duration"] > 0
    assert body["load_duration"] == 0
    single = await server.client.post("/api/embed", json={"model": FAKE_MODEL, "input": "three"})
    assert single.json()["embeddings"] == body["embeddings"][1:]
    legacy = await server.client.post(
        "/api/embeddings", json={"model": FAKE_MODEL, "prompt": "three"}
    )
    assert legacy.json() == {"embedding": body["embeddings"][1]}
    wrong = await server.client.post(
        "/api/embed", json={"model": FAKE_MODEL, "input": "x", "dimensions": 2}
    )
    assert wrong.status_code == 400
    assert "dimensions" in wrong.json()["error"]


async def test_tags_ps_show_version(server: FakeServer) -> None:
    tags = (await server.client.get("/api/tags")).json()["models"]
    assert [m["name"] for m in tags] == [FAKE_MODEL, OTHER_MODEL]
    first = tags[0]
    assert first["model"] == FAKE_MODEL
    assert len(first["digest"]) == 64
    assert first["details"]["format"] == "gguf"
    datetime.fromisoformat(first["modified_at"])
    running = (await server.client.get("/api/ps")).json()["models"]
    assert {m["name"] for m in running} == {FAKE_MODEL, OTHER_MODEL}
    assert all(m["size_vram"] == 0 and m["context_length"] == 64 for m in running)
    show = (await server.client.post("/api/show", json={"model": f"{FAKE_MODEL}:latest"})).json()
    assert show["capabilities"] == ["completion", "tools", "embedding"]
    assert show["model_info"]["slmserve.context_length"] == 64
    assert show["parameters"].split() == ["num_ctx", "64"]
    assert show["details"]["format"] == "gguf"
    version = (await server.client.get("/api/version")).json()
    assert set(version) == {"version"}


async def test_metrics_count_ollama_requests(server: FakeServer) -> None:
    await server.client.post(CHAT, json=chat(stream=False))
    await server.client.post(CHAT, json={**chat(), "model": "nope"})
    metrics = (await server.client.get("/metrics")).text
    assert value(metrics, "slmserve_request_success_total", api="ollama") == 1
    assert value(metrics, "slmserve_request_errors_total", api="ollama") == 1


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def test_gguf_header_reader(tmp_path: Path) -> None:
    """Metadata scalars and strings are read, arrays skipped, parameters counted from shapes."""
    pairs = [
        (_gguf_string("general.architecture"), 8, _gguf_string("llama")),
        (_gguf_string("llama.context_length"), 4, struct.pack("<I", 2048)),
        (_gguf_string("general.file_type"), 4, struct.pack("<I", 3)),
        (
            _gguf_string("tokenizer.ggml.tokens"),
            9,
            struct.pack("<IQ", 8, 2) + _gguf_string("a") + _gguf_string("b"),
        ),
        (_gguf_string("tokenizer.ggml.scores"), 9, struct.pack("<IQ", 6, 2) + b"\0" * 8),
        (_gguf_string("tokenizer.chat_template"), 8, _gguf_string("{{ messages }}")),
    ]
    tensors = [("a", (4, 8)), ("b", (10,))]
    data = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(pairs))
    for key, kind, raw in pairs:
        data += key + struct.pack("<I", kind) + raw
    for name, dims in tensors:
        data += _gguf_string(name) + struct.pack("<I", len(dims))
        data += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, 0)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(data)
    metadata, parameters = read_gguf_header(path)
    assert metadata == {
        "general.architecture": "llama",
        "llama.context_length": 2048,
        "general.file_type": 3,
        "tokenizer.chat_template": "{{ messages }}",
    }
    assert parameters == 42
