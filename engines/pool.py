"""The engine pool: one worker per loaded model, requests routed by model name.

Per model the pool keeps the worker, its load state and `parallel` slots; a request holds a slot
from the moment it is sent to the worker until its last event, so a model never has more
requests in flight than it has sequences. Loading runs in the background and is shared by every
request that waits for it. A worker that dies fails its in-flight requests (the worker client
does that) and is started again by the next request.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from engines.base import EngineInfo, Event, Failed, GenerationRequest
from engines.config import ModelConfig
from engines.errors import (
    EngineError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerShuttingDownError,
)
from engines.worker_client import WorkerProcess

log = logging.getLogger("slmserve.pool")


class Worker(Protocol):
    """What the pool needs from a worker (a process in production, a fake in HTTP tests)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def alive(self) -> bool: ...

    async def start(self) -> EngineInfo: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]: ...

    async def stop(self, timeout_s: float = 10.0) -> None: ...

    async def wait_exited(self) -> int:
        """Wait until the worker has exited for any reason; returns its exit code."""
        ...


WorkerFactory = Callable[[ModelConfig], Worker]


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A snapshot of one model for /v1/models and readiness."""

    name: str
    engine: str
    provider: str
    state: ModelState
    reason: str | None
    preload: bool
    context_length: int | None
    parallel: int
    running: int
    waiting: int
    pid: int | None
    load_seconds: float | None
    last_used: float | None  # unix time


class _ModelEntry:
    """The pool's record of one configured model."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.worker: Worker | None = None
        self.info: EngineInfo | None = None
        self.load_task: asyncio.Task[Worker] | None = None
        self.watch_task: asyncio.Task[None] | None = None
        self.failure: str | None = None  # a load failure: the model stays failed
        self.last_exit: str | None = None  # why the previous worker went away
        self.slots = asyncio.Semaphore(config.parallel)
        self.running = 0
        self.waiting = 0
        self.last_used: float | None = None

    @property
    def state(self) -> ModelState:
        if self.worker is not None and self.worker.alive:
            return ModelState.READY
        if self.load_task is not None and not self.load_task.done():
            return ModelState.LOADING
        if self.failure is not None:
            return ModelState.FAILED
        return ModelState.UNLOADED

    def status(self) -> ModelStatus:
        state = self.state
        info = self.info
        return ModelStatus(
            name=self.config.name,
            engine=self.config.engine,
            provider=info.provider if info else self.config.provider,
            state=state,
            reason=self.failure
            if state is ModelState.FAILED
            else (None if state is ModelState.READY else self.last_exit),
            preload=self.config.preload,
            context_length=info.context_length if info else self.config.context_length,
            parallel=self.config.parallel,
            running=self.running,
            waiting=self.waiting,
            pid=self.worker.pid if self.worker is not None and self.worker.alive else None,
            load_seconds=info.load_seconds if info else None,
            last_used=self.last_used,
        )


class EnginePool:
    """Routes generation requests to per-model workers and owns their lifecycle."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        *,
        worker_factory: WorkerFactory | None = None,
        log_level: str = "INFO",
    ) -> None:
        self._entries = {model.name: _ModelEntry(model) for model in models}
        self._worker_factory: WorkerFactory = worker_factory or (
            lambda config: WorkerProcess(config, log_level=log_level)
        )
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading every preloaded model; readiness reports when they are warm."""
        for entry in self._entries.values():
            if entry.config.preload:
                self._begin_load(entry)

    async def wait_preloaded(self) -> None:
        """Wait until every preloaded model has finished loading (successfully or not)."""
        tasks = [e.load_task for e in self._entries.values() if e.load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop every worker. New requests are refused from now on."""
        self._closing = True
        for entry in self._entries.values():
            if entry.load_task is not None and not entry.load_task.done():
                entry.load_task.cancel()
        await asyncio.gather(
            *(self._stop_worker(entry) for entry in self._entries.values()),
            return_exceptions=True,
        )

    def is_ready(self) -> bool:
        """True when every preloaded model is loaded and warm."""
        return not self._closing and all(
            entry.state is ModelState.READY
            for entry in self._entries.values()
            if entry.config.preload
        )

    # -- queries -------------------------------------------------------------------------

    def statuses(self) -> list[ModelStatus]:
        return [entry.status() for entry in self._entries.values()]

    def status(self, name: str) -> ModelStatus:
        return self._entry(name).status()

    # -- generation ----------------------------------------------------------------------

    async def generate(self, name: str, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        """The events of one request; a `Failed` event is raised as its EngineError."""
        entry = self._entry(name)
        if self._closing:
            raise ServerShuttingDownError("the server is shutting down")
        entry.waiting += 1
        try:
            await entry.slots.acquire()
        finally:
            entry.waiting -= 1
        entry.running += 1
        try:
            worker = await self._ready_worker(entry)
            async with aclosing(worker.generate(request)) as events:
                async for event in events:
                    if isinstance(event, Failed):
                        raise event.to_error()
                    yield event
        finally:
            entry.running -= 1
            entry.slots.release()
            entry.last_used = time.time()

    # -- internals -----------------------------------------------------------------------

    def _entry(self, name: str) -> _ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            available = ", ".join(sorted(self._entries)) or "none"
            raise ModelNotFoundError(
                f"The model {name!r} does not exist. Available models: {available}.",
                param="model",
            )
        return entry

    async def _ready_worker(self, entry: _ModelEntry) -> Worker:
        if entry.worker is not None and entry.worker.alive:
            return entry.worker
        if entry.failure is not None:
            raise ModelUnavailableError(
                f"model {entry.config.name!r} failed to load: {entry.failure}", param="model"
            )
        task = self._begin_load(entry)
        # Shielded: a client that gives up must not cancel a load other requests wait for.
        try:
            return await asyncio.shield(task)
        except EngineError as error:
            raise ModelUnavailableError(
                f"model {entry.config.name!r} failed to load: {error.message}", param="model"
            ) from error

    def _begin_load(self, entry: _ModelEntry) -> asyncio.Task[Worker]:
        """Start loading the model, or join the load already under way."""
        if entry.load_task is not None and not entry.load_task.done():
            return entry.load_task
        entry.failure = None
        task = asyncio.create_task(self._load(entry), name=f"load-{entry.config.name}")
        # Retrieve the exception so an unawaited failed load is not reported as lost.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        entry.load_task = task
        return task

    async def _load(self, entry: _ModelEntry) -> Worker:
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
        entry.worker = worker
        entry.info = info
        entry.watch_task = asyncio.create_task(
            self._watch(entry, worker), name=f"watch-{config.name}"
        )
        log.info(
            "model %s ready in %.2fs on %s (pid %s)",
            config.name,
            info.load_seconds,
            info.provider,
            worker.pid,
        )
        return worker

    async def _watch(self, entry: _ModelEntry, worker: Worker) -> None:
        """Notice a worker that exits on its own; preloaded models are started again at once."""
        pid = worker.pid
        code = await worker.wait_exited()
        if self._closing or entry.worker is not worker:
            return  # stopped on purpose, or already replaced
        entry.worker = None
        entry.last_exit = f"the worker (pid {pid}) exited with code {code}"
        log.error("model %s: %s", entry.config.name, entry.last_exit)
        if entry.config.preload:
            self._begin_load(entry)

    async def _stop_worker(self, entry: _ModelEntry) -> None:
        worker, entry.worker = entry.worker, None
        if worker is not None:
            await worker.stop()
