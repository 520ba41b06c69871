"""The pool with real worker processes on the real model."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.base import Event, Finished, GenerationRequest, Message, TokenEvent
from engines.config import ModelConfig
from engines.errors import ModelNotFoundError, ModelUnavailableError, WorkerCrashedError
from engines.pool import EnginePool, ModelState
from engines.sampling import SamplingParams


def ask(request_id: str, max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(Message("user", "Tell me a story about a lighthouse."),),
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
    )


async def collect(events: AsyncIterator[Event]) -> tuple[str, Finished]:
    text = ""
    async for event in events:
        if isinstance(event, TokenEvent | Finished):
            text += event.text
        if isinstance(event, Finished):
            return text, event
    raise AssertionError("no Finished event")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def pool(default_model_path: Path, tmp_path: Path) -> AsyncIterator[EnginePool]:
    models = [
        ModelConfig(
            name="smol", engine="gguf", path=default_model_path, context_length=512, parallel=1
        ),
        ModelConfig(name="broken", engine="gguf", path=tmp_path / "missing.gguf"),
    ]
    engine_pool = EnginePool(models)
    await engine_pool.start()
    await engine_pool.wait_preloaded()
    yield engine_pool
    await engine_pool.close()


async def test_routes_to_the_worker_and_reports_state(pool: EnginePool) -> None:
    status = pool.status("smol")
    assert status.state is ModelState.READY
    assert status.pid is not None
    assert pid_exists(status.pid)
    assert status.pid != os.getpid()
    text, finished = await collect(pool.generate("smol", ask("a")))
    assert text
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 8)


async def test_failed_model_is_reported_others_serve_and_readiness_waits(pool: EnginePool) -> None:
    broken = pool.status("broken")
    assert broken.state is ModelState.FAILED
    assert broken.reason is not None
    assert "not found" in broken.reason
    with pytest.raises(ModelUnavailableError, match="not found"):
        await collect(pool.generate("broken", ask("b")))
    # The other model serves, but the replica is not ready: it cannot serve all it should.
    await collect(pool.generate("smol", ask("c")))
    assert not pool.is_ready()


async def test_unknown_model(pool: EnginePool) -> None:
    with pytest.raises(ModelNotFoundError, match="Available models: broken, smol"):
        await collect(pool.generate("gpt-4", ask("d")))


async def test_killed_worker_fails_in_flight_request_and_comes_back(pool: EnginePool) -> None:
    old_pid = pool.status("smol").pid
    assert old_pid is not None
    events = pool.generate("smol", ask("long", max_tokens=400))
    first = await anext(events)
    assert first.request_id == "long"
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="exit code -9"):
        await collect(events)
    # Preloaded: the pool restarts it by itself (readiness comes back without traffic). A
    # worker start takes seconds on a busy machine: allow 30.
    for _ in range(600):
        if pool.status("smol").state is ModelState.READY:
            break
        await asyncio.sleep(0.05)
    new_pid = pool.status("smol").pid
    assert new_pid is not None
    assert new_pid != old_pid
    assert not pid_exists(old_pid)
    await collect(pool.generate("smol", ask("after")))


async def test_requests_to_one_model_are_served_one_at_a_time(pool: EnginePool) -> None:
    running_seen = []

    async def one(request_id: str) -> None:
        async for _ in pool.generate("smol", ask(request_id, max_tokens=4)):
            running_seen.append(pool.status("smol").running)

    await asyncio.gather(*(one(str(i)) for i in range(3)))
    assert max(running_seen) == 1
    assert pool.status("smol").running == 0


async def test_close_stops_worker_processes(default_model_path: Path) -> None:
    engine_pool = EnginePool(
        [ModelConfig(name="smol", engine="gguf", path=default_model_path, context_length=256)]
    )
    await engine_pool.start()
    await engine_pool.wait_preloaded()
    pid = engine_pool.status("smol").pid
    assert pid is not None
    await engine_pool.close()
    assert not pid_exists(pid)
