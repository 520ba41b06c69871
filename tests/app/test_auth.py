"""API keys: 401 in the envelope, public probes, /metrics keyed by setting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.auth import ApiKeys
from app.main import build_app
from app.settings import ServerSettings
from tests.app.conftest import FAKE_MODEL, fake_models
from tests.fakes import InProcessWorker
from tests.metrics_text import value

CHAT = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "a b"}]}


async def client_for(settings: ServerSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings, fake_models(), worker_factory=InProcessWorker)
    async with app.router.lifespan_context(app):
        await app.state.pool.wait_preloaded()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nfile-key\n\n")
    async for client in client_for(ServerSettings(api_key="k1, k2", api_key_file=key_file)):
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_missing_and_wrong_keys_are_401_in_the_envelope(keyed: httpx.AsyncClient) -> None:
    for headers in ({}, bearer("nope"), {"Authorization": "Basic azE="}, bearer("")):
        response = await keyed.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    for path in ("/v1/models", f"/v1/models/{FAKE_MODEL}"):
        assert (await keyed.get(path)).status_code == 401
    assert (await keyed.post(f"/admin/models/{FAKE_MODEL}/unload")).status_code == 401


async def test_a_bad_body_without_a_key_is_still_401(keyed: httpx.AsyncClient) -> None:
    response = await keyed.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


async def test_every_configured_key_works(keyed: httpx.AsyncClient) -> None:
    for key in ("k1", "k2", "file-key"):
        response = await keyed.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "b a"
    assert (await keyed.get("/v1/models", headers=bearer("k2"))).status_code == 200


async def test_probes_docs_and_metrics_are_public_by_default(keyed: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/openapi.json", "/metrics"):
        assert (await keyed.get(path)).status_code == 200, path
    await keyed.post("/v1/chat/completions", json=CHAT)
    metrics = (await keyed.get("/metrics")).text
    assert value(metrics, "slmserve_request_errors_total", code="invalid_api_key") == 1


async def test_metrics_can_require_the_key() -> None:
    settings = ServerSettings(api_key="k1", metrics_require_api_key=True)
    async for client in client_for(settings):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer("k1"))).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_no_keys_means_open() -> None:
    async for client in client_for(ServerSettings()):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


def test_keys_are_compared_by_digest() -> None:
    keys = ApiKeys(["secret"])
    assert keys.accepts("secret")
    assert not keys.accepts("secret ")
    assert not keys.accepts("")
    assert not ApiKeys([]).enabled
