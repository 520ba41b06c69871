"""Concurrent requests through the server: each gets exactly its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL_NAME, ONNX_MODEL_NAME
from tests.e2e.server import LiveServer, run_server, write_models

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colours.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def parallel_server(
    default_model_path: Path, onnx_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("parallel")
    common = {"context_length": 1024, "parallel": 4}
    models = [
        {"name": DEFAULT_MODEL_NAME, "engine": "gguf", "path": str(default_model_path), **common},
        {"name": ONNX_MODEL_NAME, "engine": "onnx", "path": str(onnx_model_path), **common},
    ]
    with run_server(write_models(directory / "models.yaml", models), directory / "log") as server:
        yield server


async def ask(client: openai.AsyncOpenAI, model: str, question: str, **fields: Any) -> str:
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=30,
        stream=True,
        **fields,
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


@pytest.mark.parametrize("model", [DEFAULT_MODEL_NAME, ONNX_MODEL_NAME])
async def test_concurrent_requests_get_what_each_gets_alone(
    parallel_server: LiveServer, model: str
) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{parallel_server.base_url}/v1", api_key="x", max_retries=0
    )
    alone = [await ask(client, model, question, temperature=0) for question in QUESTIONS]
    together = await asyncio.gather(
        *(ask(client, model, question, temperature=0) for question in QUESTIONS)
    )
    assert together == alone
    assert len(set(alone)) == len(QUESTIONS)
    seeded = {"temperature": 1.0, "seed": 7}
    reference = await ask(client, model, QUESTIONS[1], **seeded)
    mixed = await asyncio.gather(
        ask(client, model, QUESTIONS[1], **seeded),
        *(ask(client, model, q, temperature=1.0) for q in QUESTIONS[2:]),
        ask(client, model, QUESTIONS[1], **seeded),
    )
    assert mixed[0] == mixed[-1] == reference
    await client.close()


async def test_a_cancelled_stream_frees_its_slot_for_the_next(
    parallel_server: LiveServer,
) -> None:
    body = {
        "model": DEFAULT_MODEL_NAME,
        "messages": [{"role": "user", "content": "Write a very long story about dragons."}],
        "max_tokens": 800,
        "temperature": 0,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=parallel_server.base_url, timeout=60) as client:
        # Four long streams fill the four slots; one of them is abandoned early.
        streams = [client.stream("POST", "/v1/chat/completions", json=body) for _ in range(4)]
        responses = [await stream.__aenter__() for stream in streams]
        for response in responses:
            await anext(response.aiter_lines())
        await streams[0].__aexit__(None, None, None)
        quick = {**body, "max_tokens": 3, "stream": False}
        answer = await asyncio.wait_for(client.post("/v1/chat/completions", json=quick), 10)
        assert answer.json()["choices"][0]["finish_reason"] == "length"
        for stream in streams[1:]:
            await stream.__aexit__(None, None, None)
    card = parallel_server.models()[DEFAULT_MODEL_NAME]
    assert card["waiting"] == 0
