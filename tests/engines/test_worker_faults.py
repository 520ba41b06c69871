"""Fault injection on the real worker process, on both engines: nothing a request does to an
engine takes the worker down. The engine raises (not an EngineError) inside submit, inside one
request's step, inside detokenization and on a whole step, while two other streams run: they
finish, the failing request gets a 500 `internal_error`, the pid stays, restarts stay 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from app.main import build_app
from app.settings import ServerSettings
from engines.config import ModelConfig, ModelsFile
from engines.worker_client import WorkerProcess
from tests.engines.faulty_engine import IN_STEP, IN_SUBMIT, IN_WHOLE_STEP, POISON_TOKEN

MODEL = "faulty"
HEALTHY_TOKENS = 24


@dataclass
class App:
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient


@pytest.fixture(params=["gguf", "onnx"])
async def app(
    request: pytest.FixtureRequest, default_model_path: Path, onnx_model_path: Path
) -> AsyncIterator[App]:
    engine = request.param
    path = default_model_path if engine == "gguf" else onnx_model_path
    models = ModelsFile(
        models=[ModelConfig(name=MODEL, engine=engine, path=path, context_length=512, parallel=4)]
    )

    def worker(config: ModelConfig) -> WorkerProcess:
        return WorkerProcess(config, engine_factory="tests.engines.faulty_engine:load")

    application = build_app(ServerSettings(), models, worker_factory=worker)
    async with application.router.lifespan_context(application):
        await application.state.pool.wait_preloaded()
        transport = httpx.ASGITransport(app=application)
        # openai 3 speaks through httpx2, which has its own ASGI transport.
        sdk_http = openai.DefaultAsyncHttpxClient(transport=httpx2.ASGITransport(app=application))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            client = openai.AsyncOpenAI(
                base_url="http://test/v1", api_key="-", http_client=sdk_http, max_retries=0
            )
            yield App(client, http)
            await client.close()


async def model_card(app: App) -> dict[str, object]:
    cards = (await app.http.get("/v1/models")).json()["data"]
    card: dict[str, object] = next(c for c in cards if c["id"] == MODEL)
    return card


async def healthy_stream(app: App, topic: str) -> str:
    stream = await app.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Write about {topic}."}],
        max_tokens=HEALTHY_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, reason, usage = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reason = choice.finish_reason or reason
    assert reason in ("stop", "length")
    assert usage is not None
    assert usage.completion_tokens > 0
    return text


FAULTS: dict[str, dict[str, Any]] = {
    "submit": {"messages": [{"role": "user", "content": f"{IN_SUBMIT} hello"}]},
    "one request's step": {"messages": [{"role": "user", "content": f"{IN_STEP} hello"}]},
    "detokenization": {
        "messages": [{"role": "user", "content": "Say anything."}],
        "logit_bias": {str(POISON_TOKEN): 100},
    },
    "a whole step": {"messages": [{"role": "user", "content": f"{IN_WHOLE_STEP} hello"}]},
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failing_request_fails_alone_and_the_worker_lives(app: App, fault: str) -> None:
    pid = (await model_card(app))["pid"]
    assert isinstance(pid, int)
    healthy = [asyncio.create_task(healthy_stream(app, t)) for t in ("the sea", "a forest")]
    await asyncio.sleep(0.3)  # the healthy streams are generating when the fault strikes
    failing = app.client.chat.completions.create(
        model=MODEL, max_tokens=16, temperature=0, **FAULTS[fault]
    )
    if fault == "a whole step":
        # A step that raises leaves the engine's state unknown: every request then in it fails
        # (500), but the worker lives on and serves the next requests.
        results = await asyncio.gather(failing, *healthy, return_exceptions=True)
        assert any(isinstance(r, openai.InternalServerError) for r in results), results
    else:
        with pytest.raises(openai.InternalServerError) as failed:
            await failing
        assert failed.value.code == "internal_error"
        assert "request id" in failed.value.message
        texts = await asyncio.gather(*healthy)
        assert all(texts)
    card = await model_card(app)
    assert (card["pid"], card["restarts"], card["state"]) == (pid, 0, "ready")
    assert await healthy_stream(app, "the sky"), "the model still serves"
