"""Fast tier: the real app and pool, fake engines stepped in-process, an in-process ASGI client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.main import build_app
from app.settings import ServerSettings
from engines.config import ModelConfig, ModelsFile
from tests.fakes import InProcessWorker

FAKE_MODEL = "fake-chat"
OTHER_MODEL = "fake-other"


@dataclass
class FakeServer:
    client: httpx.AsyncClient
    workers: dict[str, list[InProcessWorker]] = field(default_factory=dict)

    def worker(self, model: str = FAKE_MODEL) -> InProcessWorker:
        return self.workers[model][-1]


def fake_models() -> ModelsFile:
    return ModelsFile(
        models=[
            ModelConfig(name=FAKE_MODEL, engine="gguf", path=Path("/fake.gguf"), parallel=2),
            ModelConfig(name=OTHER_MODEL, engine="gguf", path=Path("/other.gguf")),
        ]
    )


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    workers: dict[str, list[InProcessWorker]] = {}

    def factory(config: ModelConfig) -> InProcessWorker:
        worker = InProcessWorker(config)
        workers.setdefault(config.name, []).append(worker)
        return worker

    app = build_app(ServerSettings(), fake_models(), worker_factory=factory)
    async with app.router.lifespan_context(app):
        await app.state.pool.wait_preloaded()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield FakeServer(client, workers)
