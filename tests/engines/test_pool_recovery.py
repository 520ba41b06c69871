"""Crash recovery and backoff in the pool, on fake workers (fast and deterministic)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.base import GenerationRequest, Message
from engines.config import ModelConfig
from engines.errors import ModelUnavailableError
from engines.pool import EnginePool, ModelState
from tests.fakes import InProcessWorker


class Workers(list[InProcessWorker]):
    def factory(self, config: ModelConfig) -> InProcessWorker:
        worker = InProcessWorker(config)
        self.append(worker)
        return worker


@pytest.fixture
async def pool_and_workers() -> AsyncIterator[tuple[EnginePool, Workers]]:
    workers = Workers()
    pool = EnginePool(
        [ModelConfig(name="m", engine="gguf", path=Path("/m.gguf"))],
        worker_factory=workers.factory,
    )
    await pool.start()
    await pool.wait_preloaded()
    yield pool, workers
    await pool.close()


async def until_ready(pool: EnginePool) -> None:
    for _ in range(500):
        if pool.status("m").state is ModelState.READY:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the model did not come back")


async def answer(pool: EnginePool) -> None:
    request = GenerationRequest("r", (Message("user", "a b"),))
    async for _ in pool.generate("m", request):
        pass


async def test_first_crash_restarts_at_once_and_repeated_crashes_back_off(
    pool_and_workers: tuple[EnginePool, Workers],
) -> None:
    pool, workers = pool_and_workers
    workers[-1].crash()
    await until_ready(pool)
    assert len(workers) == 2
    assert pool.status("m").restarts == 1
    assert pool.is_ready()

    workers[-1].crash()
    await asyncio.sleep(0.05)
    status = pool.status("m")
    assert status.state is ModelState.UNLOADED
    assert status.reason is not None
    assert "died" in status.reason
    assert not pool.is_ready()
    with pytest.raises(ModelUnavailableError, match="keeps crashing") as caught:
        await answer(pool)
    assert caught.value.retry_after_s == 1
    await until_ready(pool)
    assert pool.status("m").restarts == 2
    await answer(pool)
