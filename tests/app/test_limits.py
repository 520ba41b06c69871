"""Body size limit, caps on tokens and messages, CORS, and draining."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.main import begin_drain, build_app
from app.settings import ServerSettings
from tests.app.conftest import FAKE_MODEL, fake_models
from tests.fakes import InProcessWorker

URL = "/v1/chat/completions"


def chat(content: str = "a b c", **fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **fields}


async def serve(settings: ServerSettings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = build_app(settings, fake_models(), worker_factory=InProcessWorker)
    async with app.router.lifespan_context(app):
        await app.state.pool.wait_preloaded()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, app


@pytest.fixture
async def limited() -> AsyncIterator[httpx.AsyncClient]:
    settings = ServerSettings(max_request_bytes=2048, max_tokens_cap=2, max_messages=3)
    async for client, _ in serve(settings):
        yield client


async def test_oversized_bodies_are_413_in_the_envelope(limited: httpx.AsyncClient) -> None:
    big = chat("x " * 2000)
    response = await limited.post(URL, json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"model": "fake-chat", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 100
        yield b'"}]}'

    response = await limited.post(
        URL, content=chunked(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert (await limited.post(URL, json=chat())).status_code == 200


async def test_caps_on_messages_and_max_tokens(limited: httpx.AsyncClient) -> None:
    many = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x"}] * 4}
    response = await limited.post(URL, json=many)
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (
        "messages",
        "too_many_messages",
    )
    response = await limited.post(URL, json=chat(max_completion_tokens=3))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_completion_tokens"
    # Asking for nothing in particular is bounded by the cap, not refused.
    response = await limited.post(URL, json=chat("a b c d e"))
    body = response.json()
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == (
        "length",
        2,
    )


async def test_cors_when_configured() -> None:
    settings = ServerSettings(cors_allow_origins=["https://app.example"], api_key="k")
    async for client, _ in serve(settings):
        preflight = await client.options(
            URL,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        response = await client.post(
            URL,
            json=chat(),
            headers={"Origin": "https://app.example", "Authorization": "Bearer k"},
        )
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_by_default() -> None:
    async for client, _ in serve(ServerSettings()):
        response = await client.get("/v1/models", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers


async def test_draining_refuses_new_work_and_is_not_ready() -> None:
    async for client, app in serve(ServerSettings()):
        begin_drain(app)
        response = await client.post(URL, json=chat())
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "shutting_down"
        assert (await client.get("/ready")).status_code == 503
        assert (await client.get("/health")).status_code == 200
