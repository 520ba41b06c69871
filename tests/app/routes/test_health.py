"""Liveness, readiness, and the envelope on routes that do not exist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from app.main import build_app
from app.settings import ServerSettings
from engines.base import EngineInfo
from engines.config import ModelConfig, ModelsFile
from tests.app.conftest import FakeServer
from tests.fakes import InProcessWorker


async def test_health(server: FakeServer) -> None:
    response = await server.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_models_are_warm(server: FakeServer) -> None:
    response = await server.client.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


async def test_not_ready_while_a_preloaded_model_loads() -> None:
    release = asyncio.Event()

    class SlowWorker(InProcessWorker):
        async def start(self) -> EngineInfo:
            await release.wait()
            return await super().start()

    models = ModelsFile(
        models=[
            ModelConfig(name="slow", engine="gguf", path=Path("/slow.gguf")),
            ModelConfig(name="lazy", engine="gguf", path=Path("/lazy.gguf"), preload=False),
        ]
    )
    app = build_app(ServerSettings(), models, worker_factory=SlowWorker)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/ready")
            assert response.status_code == 503
            assert response.json() == {
                "status": "not_ready",
                "models": {"slow": "loading", "lazy": "unloaded"},
            }
            assert (await client.get("/health")).status_code == 200
            release.set()
            await app.state.pool.wait_preloaded()
            response = await client.get("/ready")
            assert response.status_code == 200
            assert response.json()["models"] == {"slow": "ready", "lazy": "unloaded"}


async def test_unknown_route_and_method_use_the_envelope(server: FakeServer) -> None:
    response = await server.client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = await server.client.delete("/v1/models")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
