"""Crash recovery and backoff in the pool, on fake workers (fast and deterministic)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engines.base import GenerationRequest, Message
from engines.config import ModelConfig
from engines.errors import EngineError, ModelLoadError, ModelUnavailableError
from engines.pool import EnginePool, ModelState
from tests.fakes import InProcessWorker, ScriptedWorker


class Workers(list[InProcessWorker]):
    def __init__(self) -> None:
        super().__init__()
        self.start_errors: list[EngineError] = []  # the next starts fail with these, in turn

    def factory(self, config: ModelConfig) -> InProcessWorker:
        error = self.start_errors.pop(0) if self.start_errors else None
        worker = ScriptedWorker(config, start_error=error)
        self.append(worker)
        return worker


def make_pool(workers: Workers, **fields: Any) -> EnginePool:
    config = ModelConfig(name="m", engine="gguf", path=Path("/m.gguf"), **fields)
    return EnginePool([config], worker_factory=workers.factory)


@pytest.fixture
async def pool_and_workers() -> AsyncIterator[tuple[EnginePool, Workers]]:
    workers = Workers()
    pool = make_pool(workers)
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


async def until_state(pool: EnginePool, state: ModelState) -> None:
    for _ in range(200):
        if pool.status("m").state is state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the model did not become {state}")


@pytest.mark.parametrize(
    "fields", [{"preload": True}, {"preload": False, "pinned": True}], ids=["preloaded", "pinned"]
)
async def test_a_failed_restart_is_retried_with_backoff(fields: dict[str, Any]) -> None:
    workers = Workers()
    pool = make_pool(workers, **fields)
    await pool.start()
    try:
        await answer(pool)  # loads the pinned one; the preloaded one is loaded already
        workers.start_errors.append(ModelLoadError("not enough memory to load"))
        workers[-1].crash()
        await until_state(pool, ModelState.FAILED)
        status = pool.status("m")
        assert status.reason is not None
        assert status.reason.startswith(
            "restarting after its worker died failed: not enough memory to load; retrying in "
        )
        assert pool.is_ready() is not status.preload  # readiness counts preloaded models
        with pytest.raises(ModelUnavailableError, match="retrying in") as caught:
            await answer(pool)
        assert caught.value.retry_after_s == 1
        await until_ready(pool)  # after a second of backoff, with no request or admin call
        assert len(workers) == 3
        assert pool.status("m").reason is None
        assert pool.is_ready()
        await answer(pool)
    finally:
        await pool.close()


async def test_a_failed_first_load_stays_failed_until_an_admin_loads_it() -> None:
    workers = Workers()
    workers.start_errors.append(ModelLoadError("no such file: /m.gguf"))
    pool = make_pool(workers)
    await pool.start()
    await pool.wait_preloaded()
    try:
        await asyncio.sleep(1.2)  # past the first retry's backoff, were it retried
        status = pool.status("m")
        assert (status.state, status.reason) == (ModelState.FAILED, "no such file: /m.gguf")
        assert len(workers) == 1
        assert not pool.is_ready()
        assert (await pool.load("m")).state is ModelState.READY
        assert pool.is_ready()
    finally:
        await pool.close()
