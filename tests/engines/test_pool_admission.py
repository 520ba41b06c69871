"""Loads under the pool's limits, on fake workers: concurrent loads, reserved room, memory growth.

Each worker gets a made-up pid whose resident memory the test sets (`Fleet.sizes`); a model's
first memory estimate is the size of its file, so the tests write files of chosen sizes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engines.base import GenerationRequest, Message
from engines.config import ModelConfig, PoolConfig
from engines.errors import EngineError, ModelLoadError, ModelUnavailableError
from engines.loader import check_loadable
from engines.pool import EnginePool, ModelState
from tests.fakes import ScriptedWorker

PoolMaker = Callable[..., EnginePool]


class Fleet:
    """Makes the pool's workers: a test holds a model's starts on a gate, fails its next start,
    and sets its resident memory."""

    def __init__(self) -> None:
        self.made: list[ScriptedWorker] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.start_errors: dict[str, EngineError] = {}
        self.sizes: dict[str, int] = {}  # resident bytes by model name
        self.most_in_use = 0  # the most workers loading or loaded at once
        self._pids = itertools.count(1_000_000)

    def factory(self, config: ModelConfig) -> ScriptedWorker:
        in_use = sum(1 for w in self.made if w.alive or w.starting)
        self.most_in_use = max(self.most_in_use, in_use + 1)
        worker = ScriptedWorker(
            config,
            fake_pid=next(self._pids),
            gate=self.gates.get(config.name),
            start_error=self.start_errors.pop(config.name, None),
        )
        self.made.append(worker)
        return worker

    def made_for(self, name: str) -> int:
        return sum(1 for w in self.made if w.config.name == name)

    def resident_bytes(self, pid: int | None) -> int | None:
        for worker in self.made:
            if worker.pid == pid and worker.alive:
                return self.sizes.get(worker.config.name, 0)
        return None


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Fleet:
    fleet = Fleet()
    monkeypatch.setattr("engines.pool.resident_bytes", fleet.resident_bytes)
    return fleet


@pytest.fixture
async def make_pool(fleet: Fleet, tmp_path: Path) -> AsyncIterator[PoolMaker]:
    pools: list[EnginePool] = []

    def make(models: dict[str, dict[str, Any]], **limits: Any) -> EnginePool:
        """`models`: name -> ModelConfig fields, plus `file_bytes`: the size of its file."""
        configs = []
        for name, fields in models.items():
            path = tmp_path / f"{name}.gguf"
            with path.open("wb") as file:
                file.truncate(fields.pop("file_bytes", 0))
            configs.append(ModelConfig(name=name, engine="gguf", path=path, **fields))
        pool = EnginePool(configs, pool_config=PoolConfig(**limits), worker_factory=fleet.factory)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def answer(pool: EnginePool, name: str) -> None:
    async for _ in pool.generate(name, GenerationRequest(f"to-{name}", (Message("user", "a b"),))):
        pass


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_a_slow_load_does_not_hold_up_another_model(
    fleet: Fleet, make_pool: PoolMaker
) -> None:
    pool = make_pool({"slow": {"preload": False}, "quick": {"preload": False}})
    fleet.gates["slow"] = asyncio.Event()
    slow = asyncio.create_task(answer(pool, "slow"))
    await until(lambda: fleet.made_for("slow") == 1)
    await asyncio.wait_for(answer(pool, "quick"), timeout=2)
    assert pool.status("slow").state is ModelState.LOADING
    assert pool.status("quick").state is ModelState.READY
    fleet.gates["slow"].set()
    await asyncio.wait_for(slow, timeout=2)
    assert pool.status("slow").state is ModelState.READY


async def test_a_crashed_model_restarts_while_another_model_loads(
    fleet: Fleet, make_pool: PoolMaker
) -> None:
    pool = make_pool({"crashy": {}, "slow": {"preload": False}})
    await pool.start()
    await pool.wait_preloaded()
    fleet.gates["slow"] = asyncio.Event()
    slow = asyncio.create_task(answer(pool, "slow"))
    await until(lambda: fleet.made_for("slow") == 1)
    fleet.made[0].crash()
    await until(lambda: fleet.made_for("crashy") == 2)
    await until(lambda: pool.status("crashy").state is ModelState.READY)
    assert pool.status("slow").state is ModelState.LOADING
    fleet.gates["slow"].set()
    await asyncio.wait_for(slow, timeout=2)


async def test_waiting_for_memory_does_not_hold_up_a_model_that_fits(
    fleet: Fleet, make_pool: PoolMaker
) -> None:
    pool = make_pool(
        {
            "busy": {"file_bytes": 600},
            "big": {"preload": False, "file_bytes": 600},
            "small": {"preload": False, "file_bytes": 100},
        },
        memory_budget=1000,
    )
    fleet.sizes.update(busy=600, big=600, small=100)
    await pool.start()
    await pool.wait_preloaded()
    running = pool.generate("busy", GenerationRequest("long", (Message("user", "a b c d"),)))
    await anext(running)  # `busy` holds a request, so it cannot be unloaded for `big`
    big = asyncio.create_task(answer(pool, "big"))
    await until(lambda: pool.status("big").state is ModelState.LOADING)
    await asyncio.wait_for(answer(pool, "small"), timeout=2)
    assert pool.status("big").state is ModelState.LOADING
    assert fleet.made_for("big") == 0  # still waiting for room, not loading
    await running.aclose()
    await asyncio.wait_for(big, timeout=2)
    assert pool.status("big").state is ModelState.READY
    assert pool.status("busy").reason == "evicted to make room for big"


@pytest.mark.parametrize(
    "limits",
    [{"max_loaded_models": 1}, {"memory_budget": 1000}],
    ids=["max_loaded_models", "memory_budget"],
)
async def test_a_load_under_way_holds_its_room(
    fleet: Fleet, make_pool: PoolMaker, limits: dict[str, int]
) -> None:
    pool = make_pool(
        {"a": {"preload": False, "file_bytes": 600}, "b": {"preload": False, "file_bytes": 600}},
        admission_timeout_s=0.2,
        **limits,
    )
    fleet.sizes.update(a=600, b=600)
    fleet.gates["a"] = asyncio.Event()
    loading = asyncio.create_task(answer(pool, "a"))
    await until(lambda: fleet.made_for("a") == 1)
    with pytest.raises(ModelUnavailableError, match=r"hold the room: a \(loading\)"):
        await asyncio.wait_for(answer(pool, "b"), timeout=2)
    assert fleet.made_for("b") == 0
    fleet.gates["a"].set()
    await asyncio.wait_for(loading, timeout=2)


async def test_two_loads_at_once_take_turns_under_max_loaded_models(
    fleet: Fleet, make_pool: PoolMaker
) -> None:
    pool = make_pool({"a": {"preload": False}, "b": {"preload": False}}, max_loaded_models=1)
    fleet.gates["a"] = asyncio.Event()
    first = asyncio.create_task(answer(pool, "a"))
    await until(lambda: fleet.made_for("a") == 1)
    second = asyncio.create_task(answer(pool, "b"))
    await until(lambda: pool.status("b").state is ModelState.LOADING)
    fleet.gates["a"].set()
    await asyncio.wait_for(asyncio.gather(first, second), timeout=2)
    assert fleet.most_in_use == 1
    assert pool.status("a").reason == "evicted to make room for b"


async def test_a_failed_load_gives_its_room_back(fleet: Fleet, make_pool: PoolMaker) -> None:
    pool = make_pool(
        {"bad": {"preload": False}, "good": {"preload": False}},
        max_loaded_models=1,
        admission_timeout_s=0.2,
    )
    fleet.start_errors["bad"] = ModelLoadError("not a GGUF file")
    with pytest.raises(ModelUnavailableError, match="not a GGUF file"):
        await answer(pool, "bad")
    await answer(pool, "good")
    assert pool.status("good").state is ModelState.READY


async def test_memory_grown_by_embeddings_unloads_idle_other_models(
    fleet: Fleet, make_pool: PoolMaker
) -> None:
    pool = make_pool(
        {"idle": {}, "embedder": {"preload": False, "file_bytes": 100}}, memory_budget=1000
    )
    fleet.sizes.update(idle=300, embedder=200)
    await pool.start()
    await pool.wait_preloaded()
    await pool.embed("embedder", "e1", ("hello",))
    assert pool.status("idle").state is ModelState.READY
    fleet.sizes["embedder"] = 800  # the embedding context, created on first use
    result = await pool.embed("embedder", "e2", ("hello again",))
    assert len(result.vectors) == 1
    await until(lambda: pool.status("idle").state is ModelState.UNLOADED)
    assert pool.status("idle").reason == "evicted to make room for embedder"
    assert pool.status("embedder").state is ModelState.READY


async def test_memory_grown_by_embeddings_spares_the_model_and_pinned_ones(
    fleet: Fleet, make_pool: PoolMaker
) -> None:
    pool = make_pool(
        {"pinned": {"pinned": True}, "embedder": {"file_bytes": 100}}, memory_budget=1000
    )
    fleet.sizes.update(pinned=300, embedder=200)
    await pool.start()
    await pool.wait_preloaded()
    fleet.sizes["embedder"] = 900
    result = await pool.embed("embedder", "e", ("hello",))
    assert len(result.vectors) == 1
    await asyncio.sleep(0.05)
    assert pool.status("pinned").state is ModelState.READY
    assert pool.status("embedder").state is ModelState.READY
    assert pool.status("embedder").resident_bytes == 900


async def test_a_model_that_cannot_load_evicts_nothing(fleet: Fleet, tmp_path: Path) -> None:
    """The cheap checks (file, header, engine installed) run before anything is unloaded."""
    warm = tmp_path / "warm.gguf"
    warm.write_bytes(b"GGUF" + bytes(60))
    configs = [
        ModelConfig(name="warm", engine="gguf", path=warm),
        ModelConfig(name="broken", engine="gguf", path=tmp_path / "missing.gguf", preload=False),
    ]
    pool = EnginePool(
        configs,
        pool_config=PoolConfig(max_loaded_models=1),
        worker_factory=fleet.factory,
        preflight=check_loadable,
    )
    try:
        await pool.start()
        await pool.wait_preloaded()
        worker = fleet.made[0]
        with pytest.raises(ModelUnavailableError, match="not found"):
            await answer(pool, "broken")
        assert worker.alive, "the warm model was not unloaded for a load that could not work"
        assert pool.status("warm").state is ModelState.READY
        assert pool.status("broken").state is ModelState.FAILED
        assert fleet.made_for("broken") == 0
    finally:
        await pool.close()


async def test_a_preloaded_model_evicted_for_a_failed_load_comes_back(
    fleet: Fleet, make_pool: PoolMaker
) -> None:
    pool = make_pool({"warm": {}, "flaky": {"preload": False}}, max_loaded_models=1)
    await pool.start()
    await pool.wait_preloaded()
    fleet.start_errors["flaky"] = ModelLoadError("the file is corrupt past its header")
    with pytest.raises(ModelUnavailableError, match="corrupt"):
        await answer(pool, "flaky")
    await until(lambda: pool.status("warm").state is ModelState.READY)
    assert fleet.made_for("warm") == 2, "unloaded for the failed load, then loaded again"
    await answer(pool, "warm")
