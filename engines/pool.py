"""The engine pool: keeps models warm in worker processes and routes requests to them.

Per model: a worker process, `parallel` slots and a bounded queue (full: QueueFullError, a 429).
Server-wide: at most `max_loaded_models` loaded and a memory budget measured from the workers'
resident memory; to load a model, least-recently-used idle unpinned models are unloaded
(engines/admission.py decides). Loads run one at a time under a lock so two loads never plan
with the same free room. Idle models past their keep_alive are unloaded by a reaper. A worker
that dies fails its in-flight requests (the worker client does that); preloaded and pinned
models are started again by themselves, with backoff when they keep dying.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Any, Protocol

from engines.admission import LoadedModel, Verdict, plan_admission
from engines.base import Embedded, EngineInfo, Event, Failed, GenerationRequest
from engines.config import ModelConfig, PoolConfig
from engines.errors import (
    EngineError,
    ModelNotFoundError,
    ModelUnavailableError,
    QueueFullError,
    ServerShuttingDownError,
)
from engines.log_format import LogFormat
from engines.memory import model_files_bytes, resident_bytes
from engines.model_state import ModelEntry, ModelState, ModelStatus
from engines.worker_client import WorkerProcess

log = logging.getLogger("slmserve.pool")

REAPER_INTERVAL_S = 0.25

__all__ = ["EnginePool", "ModelState", "ModelStatus", "Worker", "WorkerFactory"]


class Worker(Protocol):
    """What the pool needs from a worker (a process in production, a fake in HTTP tests)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    async def start(self) -> EngineInfo: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]: ...

    async def embed(self, request_id: str, texts: tuple[str, ...]) -> Event: ...

    async def stop(self, timeout_s: float = 10.0) -> None: ...

    async def wait_exited(self) -> int:
        """Wait until the worker has exited for any reason; returns its exit code."""
        ...


WorkerFactory = Callable[[ModelConfig], Worker]


class EnginePool:
    """Routes generation requests to per-model workers and owns their lifecycle."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        *,
        pool_config: PoolConfig | None = None,
        worker_factory: WorkerFactory | None = None,
        log_level: str = "INFO",
        log_format: LogFormat = "text",
        on_model_loaded: Callable[[ModelStatus], None] | None = None,
    ) -> None:
        self._entries = {model.name: ModelEntry(model) for model in models}
        self._on_model_loaded = on_model_loaded
        self._config = pool_config or PoolConfig()
        self._worker_factory: WorkerFactory = worker_factory or (
            lambda config: WorkerProcess(
                config,
                log_level=log_level,
                log_format=log_format,
                load_timeout_s=self._config.load_timeout_s,
            )
        )
        self._load_lock = asyncio.Lock()
        # Set (and replaced) whenever a request ends: admission waits on it for room.
        self._activity = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._draining = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading every preloaded model and start unloading idle ones."""
        self._spawn(self._unload_idle_models(), "reaper")
        for entry in self._entries.values():
            if entry.config.preload:
                self._begin_load(entry)

    async def wait_preloaded(self) -> None:
        """Wait until every load under way has finished (successfully or not)."""
        tasks = [e.load_task for e in self._entries.values() if e.load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop every worker. New requests are refused from now on."""
        self._closing = True
        for task in self._background:
            task.cancel()
        for entry in self._entries.values():
            if entry.load_task is not None and not entry.load_task.done():
                entry.load_task.cancel()
        await asyncio.gather(
            *(self._stop_worker(entry, "the server stopped") for entry in self._entries.values()),
            return_exceptions=True,
        )

    def begin_drain(self) -> None:
        """Take no new requests (they get ServerShuttingDownError); running ones continue."""
        self._draining = True

    def is_ready(self) -> bool:
        """No preloaded model is still loading or restarting (see ModelEntry.serves_traffic)."""
        return not (self._closing or self._draining) and all(
            entry.serves_traffic() for entry in self._entries.values() if entry.config.preload
        )

    # -- queries -------------------------------------------------------------------------

    def statuses(self) -> list[ModelStatus]:
        return [self._status(entry) for entry in self._entries.values()]

    def status(self, name: str) -> ModelStatus:
        return self._status(self._entry(name))

    def _status(self, entry: ModelEntry) -> ModelStatus:
        pid = entry.worker.pid if entry.worker is not None else None
        return entry.status(resident_bytes(pid))

    # -- administration ------------------------------------------------------------------

    async def load(self, name: str) -> ModelStatus:
        """Load a model now (a failed one is tried again)."""
        entry = self._entry(name)
        entry.failure = None
        await self._ready_worker(entry)
        return self._status(entry)

    async def unload(self, name: str) -> ModelStatus:
        """Unload a model once its running requests have finished; its next request reloads it."""
        entry = self._entry(name)
        async with entry.all_slots():
            await self._stop_worker(entry, "unloaded by an administrator")
        return self._status(entry)

    # -- generation ----------------------------------------------------------------------

    async def generate(self, name: str, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        """The events of one request; a `Failed` event is raised as its EngineError."""
        async with self._slot(name) as entry:
            worker = await self._ready_worker(entry)
            async with aclosing(worker.generate(request)) as events:
                async for event in events:
                    if isinstance(event, Failed):
                        raise event.to_error()
                    yield event

    async def embed(self, name: str, request_id: str, texts: tuple[str, ...]) -> Embedded:
        """Embeddings of `texts` by model `name`, holding one of its slots meanwhile."""
        async with self._slot(name) as entry:
            worker = await self._ready_worker(entry)
            result = await worker.embed(request_id, texts)
        if isinstance(result, Failed):
            raise result.to_error()
        assert isinstance(result, Embedded), "a worker answers Embed with Embedded or Failed"
        return result

    @asynccontextmanager
    async def _slot(self, name: str) -> AsyncIterator[ModelEntry]:
        """Hold one of the model's slots: refused when draining or when the queue is full."""
        entry = self._entry(name)
        if self._closing or self._draining:
            raise ServerShuttingDownError("the server is shutting down; retry on another replica")
        if entry.queue_is_full():
            raise QueueFullError(
                f"model {name!r} is at capacity: {entry.running} requests running and "
                f"{entry.waiting} waiting (max_queue {entry.config.max_queue}); retry later",
                retry_after_s=entry.retry_after_s(),
            )
        entry.waiting += 1
        try:
            await entry.slots.acquire()
        finally:
            entry.waiting -= 1
        entry.running += 1
        started = time.monotonic()
        try:
            yield entry
        finally:
            # Synchronous on purpose: it runs while a cancelled request unwinds.
            entry.running -= 1
            entry.slots.release()
            entry.record_request(time.monotonic() - started)
            self._signal_activity()

    # -- loading -------------------------------------------------------------------------

    def _entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            available = ", ".join(sorted(self._entries)) or "none"
            raise ModelNotFoundError(
                f"The model {name!r} does not exist. Available models: {available}.",
                param="model",
            )
        return entry

    async def _ready_worker(self, entry: ModelEntry) -> Worker:
        if entry.worker is not None and entry.worker.alive:
            return entry.worker
        if entry.failure is not None:
            raise ModelUnavailableError(
                f"model {entry.name!r} failed to load: {entry.failure}", param="model"
            )
        wait = entry.backoff_until - time.monotonic()
        if wait > 0:
            raise ModelUnavailableError(
                f"model {entry.name!r} keeps crashing ({entry.last_exit}); "
                f"it restarts in {wait:.0f}s",
                param="model",
                retry_after_s=math.ceil(wait),
            )
        # Shielded: a client that gives up must not cancel a load other requests wait for.
        try:
            return await asyncio.shield(self._begin_load(entry))
        except EngineError as error:
            if isinstance(error, ModelUnavailableError):
                raise
            raise ModelUnavailableError(
                f"model {entry.name!r} failed to load: {error.message}", param="model"
            ) from error

    def _begin_load(self, entry: ModelEntry) -> asyncio.Task[Worker]:
        """Start loading the model, or join the load already under way."""
        if entry.load_task is not None and not entry.load_task.done():
            return entry.load_task
        task = asyncio.create_task(self._load(entry), name=f"load-{entry.name}")
        # Retrieve the exception so a failed load nobody awaited is not reported as lost.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        entry.load_task = task
        return task

    async def _load(self, entry: ModelEntry) -> Worker:
        async with self._load_lock:
            if entry.worker is not None and entry.worker.alive:
                return entry.worker
            await self._make_room_for(entry)
            config = entry.config
            log.info("loading model %s (%s, %s)", config.name, config.engine, config.path)
            worker = self._worker_factory(config)
            try:
                info = await worker.start()
            except EngineError as error:
                entry.failure = error.message
                log.error("model %s failed to load: %s", config.name, error.message)
                raise
            if self._closing:
                await worker.stop()
                raise ServerShuttingDownError("the server is shutting down")
            entry.worker, entry.info = worker, info
            entry.loaded_at = time.time()
            entry.idle_since = time.monotonic()
            entry.unloaded_on_purpose = False
            entry.measured_bytes = resident_bytes(worker.pid)
            self._spawn(self._watch(entry, worker), f"watch-{config.name}")
            await self._enforce_memory_budget(entry)
            if self._on_model_loaded is not None:
                self._on_model_loaded(self._status(entry))
            log.info(
                "model %s ready in %.2fs on %s (pid %s, %s resident)",
                config.name,
                info.load_seconds,
                info.provider,
                worker.pid,
                _megabytes(entry.measured_bytes),
            )
            return worker

    def _loaded_facts(self, exclude: ModelEntry) -> list[LoadedModel]:
        return [
            LoadedModel(
                name=e.name,
                last_used=e.idle_since,
                resident_bytes=(resident_bytes(e.worker.pid) or 0) if e.worker else 0,
                pinned=e.config.pinned,
                busy=e.busy,
            )
            for e in self._entries.values()
            if e is not exclude and e.is_loaded
        ]

    async def _make_room_for(self, entry: ModelEntry) -> None:
        """Unload idle models until `entry` fits; wait a while for busy ones; else refuse."""
        need = entry.measured_bytes or model_files_bytes(entry.config.path)
        deadline = time.monotonic() + self._config.admission_timeout_s
        while True:
            plan = plan_admission(
                self._loaded_facts(exclude=entry),
                need_bytes=need,
                max_models=self._config.max_loaded_models,
                budget=self._config.memory_budget,
            )
            if plan.verdict is Verdict.ADMIT:
                for name in plan.evict:
                    await self._stop_worker(
                        self._entries[name], f"evicted to make room for {entry.name}"
                    )
                return
            remaining = deadline - time.monotonic()
            if plan.verdict is Verdict.REFUSE or remaining <= 0:
                raise ModelUnavailableError(
                    f"model {entry.name!r} cannot be loaded: {plan.reason}", param="model"
                )
            activity = self._activity
            with suppress(TimeoutError):
                await asyncio.wait_for(activity.wait(), remaining)

    async def _enforce_memory_budget(self, entry: ModelEntry) -> None:
        """After a load, check the measured total; unload idle models or refuse the new one."""
        budget = self._config.memory_budget
        if budget is None:
            return
        others = self._loaded_facts(exclude=entry)
        plan = plan_admission(
            others, need_bytes=entry.measured_bytes or 0, max_models=None, budget=budget
        )
        if plan.verdict is Verdict.ADMIT:
            for name in plan.evict:
                await self._stop_worker(
                    self._entries[name], f"evicted to make room for {entry.name}"
                )
            return
        used = sum(m.resident_bytes for m in others) + (entry.measured_bytes or 0)
        await self._stop_worker(entry, "it did not fit the memory budget")
        raise ModelUnavailableError(
            f"model {entry.name!r} uses {used} bytes with the other models, over the memory "
            f"budget of {budget} bytes, and nothing idle can be unloaded ({plan.reason})",
            param="model",
        )

    # -- unloading and crashes -----------------------------------------------------------

    async def _stop_worker(self, entry: ModelEntry, reason: str) -> None:
        worker, entry.worker = entry.worker, None
        if worker is None:
            return
        entry.last_exit = reason
        entry.unloaded_on_purpose = True
        log.info("unloading model %s (pid %s): %s", entry.name, worker.pid, reason)
        await worker.stop()

    async def _watch(self, entry: ModelEntry, worker: Worker) -> None:
        """Notice a worker that exits on its own; restart preloaded and pinned models."""
        pid = worker.pid
        code = await worker.wait_exited()
        if self._closing or entry.worker is not worker:
            return  # stopped on purpose, or already replaced
        entry.worker = None
        entry.unloaded_on_purpose = False
        delay = entry.record_crash(time.monotonic())
        entry.last_exit = f"its worker (pid {pid}) died with exit code {code}"
        log.error("model %s: %s; restart in %.0fs", entry.name, entry.last_exit, delay)
        self._signal_activity()
        if entry.config.preload or entry.config.pinned:
            self._spawn(self._restart_after(entry, delay), f"restart-{entry.name}")

    async def _restart_after(self, entry: ModelEntry, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if not self._closing and entry.worker is None:
            self._begin_load(entry)

    async def _unload_idle_models(self) -> None:
        while True:
            await asyncio.sleep(REAPER_INTERVAL_S)
            now = time.monotonic()
            for entry in self._entries.values():
                keep_alive = entry.config.keep_alive
                if (
                    entry.is_loaded
                    and keep_alive >= 0
                    and not entry.config.pinned
                    and not entry.busy
                    and now - entry.idle_since >= keep_alive
                ):
                    await self._stop_worker(entry, f"idle for {keep_alive:g}s (keep_alive)")

    # -- helpers -------------------------------------------------------------------------

    def _signal_activity(self) -> None:
        self._activity.set()
        self._activity = asyncio.Event()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _megabytes(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**20:.0f} MiB"
