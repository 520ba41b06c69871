"""The engine pool: keeps models warm in worker processes and routes requests to them.

Per model: a worker process, `parallel` slots and a bounded queue (full: QueueFullError, a 429).
Server-wide: at most `max_loaded_models` loaded and a memory budget measured from the workers'
resident memory; to load a model, least-recently-used idle unpinned models are unloaded
(engines/admission.py decides). Only that decision runs under a lock: plan, unload and reserve
the room together, so two loads never plan with the same free room (a load under way counts
with the room reserved for it). Waiting for room and starting the worker run outside it, so one
model's slow load, or its wait for busy models, holds up no other model. Idle models past their
keep_alive are unloaded by a reaper. A worker that dies fails its in-flight requests (the worker
client does that); preloaded and pinned models are started again by themselves, with backoff
when they keep dying or their restart fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Any, Protocol

from engines.admission import AdmissionPlan, LoadedModel, Verdict, plan_admission
from engines.base import (
    Embedded,
    EngineInfo,
    Event,
    Failed,
    GenerationRequest,
    PromptQuery,
    PromptText,
    Tokenized,
    TokenizerInfo,
)
from engines.config import ModelConfig, PoolConfig
from engines.errors import (
    EngineError,
    ModelNotFoundError,
    ModelUnavailableError,
    QueueFullError,
    ServerShuttingDownError,
)
from engines.loader import check_loadable
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

    async def tokenize(self, request: GenerationRequest) -> Event: ...

    async def query(self, query: PromptQuery) -> Event: ...

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
        preflight: Callable[[ModelConfig], None] | None = None,
    ) -> None:
        self._entries = {model.name: ModelEntry(model) for model in models}
        self._on_model_loaded = on_model_loaded
        self._config = pool_config or PoolConfig()
        # Cheap checks before anything is evicted for a load (default: the real files, when the
        # workers are real processes).
        self._preflight = preflight or (check_loadable if worker_factory is None else None)
        self._worker_factory: WorkerFactory = worker_factory or (
            lambda config: WorkerProcess(
                config,
                log_level=log_level,
                log_format=log_format,
                load_timeout_s=self._config.load_timeout_s,
            )
        )
        # Held to decide on a load (plan, unload, reserve), never while waiting or loading.
        self._admission_lock = asyncio.Lock()
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

    def keep_alive(self, name: str, seconds: float | None) -> None:
        """Keep the loaded model `seconds` idle before unloading it (0: as soon as it is idle;
        negative: never), instead of its configured keep_alive, until it is next unloaded;
        None: back to the configured one. Pinned models stay pinned."""
        self._entry(name).keep_alive_override = seconds

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

    async def tokenize(self, name: str, request: GenerationRequest) -> list[int]:
        """The token ids `request`'s prompt becomes on model `name` (no slot needed: the worker
        answers between two steps)."""
        entry = self._entry(name)
        if self._closing or self._draining:
            raise ServerShuttingDownError("the server is shutting down; retry on another replica")
        worker = await self._ready_worker(entry)
        result = await worker.tokenize(request)
        if isinstance(result, Failed):
            raise result.to_error()
        assert isinstance(result, Tokenized), "a worker answers Tokenize with Tokenized or Failed"
        return result.token_ids

    async def query(self, name: str, query: PromptQuery) -> Tokenized | PromptText | TokenizerInfo:
        """Model `name`'s tokenizer or chat template answers `query` (no slot needed, as for
        tokenize)."""
        entry = self._entry(name)
        if self._closing or self._draining:
            raise ServerShuttingDownError("the server is shutting down; retry on another replica")
        worker = await self._ready_worker(entry)
        result = await worker.query(query)
        if isinstance(result, Failed):
            raise result.to_error()
        assert isinstance(result, Tokenized | PromptText | TokenizerInfo), "a query's answer"
        return result

    async def embed(self, name: str, request_id: str, texts: tuple[str, ...]) -> Embedded:
        """Embeddings of `texts` by model `name`, holding one of its slots meanwhile."""
        async with self._slot(name) as entry:
            worker = await self._ready_worker(entry)
            result = await worker.embed(request_id, texts)
        self._measure_again(entry, worker)
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
            now = time.monotonic()
            raise ModelUnavailableError(
                f"model {entry.name!r} failed to load: {entry.failure_reason(now)}",
                param="model",
                retry_after_s=entry.retry_after_failure_s(now),
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
        if entry.worker is not None and entry.worker.alive:
            return entry.worker
        evicted: list[ModelEntry] = []
        try:
            self._check_loadable(entry)
            evicted = await self._admit(entry)
            return await self._start_worker(entry)
        except BaseException:
            # The room went for nothing: preloaded models unloaded for it come back.
            for other in evicted:
                if other.config.preload and not self._closing and other.worker is None:
                    self._begin_load(other)
            raise
        finally:
            # Loaded (it counts by its measured memory now), failed or cancelled: either way
            # the reservation goes, and loads waiting for room look again.
            entry.reserved_bytes = None
            self._signal_activity()

    def _check_loadable(self, entry: ModelEntry) -> None:
        if self._preflight is None:
            return
        try:
            self._preflight(entry.config)
        except EngineError as error:
            entry.failure = error.message
            log.error("model %s cannot load: %s", entry.name, error.message)
            raise

    async def _admit(self, entry: ModelEntry) -> list[ModelEntry]:
        """Reserve room for `entry`, unloading idle models; wait a while for busy ones; else refuse.

        Only the decision holds the admission lock: the plan, the unloads it calls for and the
        reservation happen together, so no other load plans with the same free room. Waiting
        for room happens outside the lock, so it holds up no other model's load."""
        need = entry.measured_bytes or model_files_bytes(entry.config.path)
        deadline = time.monotonic() + self._config.admission_timeout_s
        while True:
            async with self._admission_lock:
                # Taken before planning: whatever frees room after this plan sets this event.
                activity = self._activity
                plan = plan_admission(
                    self._room_taken(exclude=entry),
                    need_bytes=need,
                    max_models=self._config.max_loaded_models,
                    budget=self._config.memory_budget,
                )
                if plan.verdict is Verdict.ADMIT:
                    await self._evict(plan.evict, f"evicted to make room for {entry.name}")
                    entry.reserved_bytes = need
                    return [self._entries[name] for name in plan.evict]
            remaining = deadline - time.monotonic()
            if plan.verdict is Verdict.REFUSE or remaining <= 0:
                raise ModelUnavailableError(
                    f"model {entry.name!r} cannot be loaded: {plan.reason}", param="model"
                )
            with suppress(TimeoutError):
                await asyncio.wait_for(activity.wait(), remaining)

    async def _start_worker(self, entry: ModelEntry) -> Worker:
        """Spawn and warm the worker (no lock held: this is the slow part), then put it in place."""
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
        # In one step with placing the worker, so the room is never counted twice or not at all.
        entry.worker, entry.info, entry.reserved_bytes = worker, info, None
        entry.failure, entry.retry_at, entry.failed_restarts = None, None, 0
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

    def _room_taken(self, exclude: ModelEntry | None) -> list[LoadedModel]:
        """What admission counts: loaded models by their resident memory, loads under way by
        the room reserved for them (busy: a model still loading cannot be unloaded)."""
        taken: list[LoadedModel] = []
        for e in self._entries.values():
            if e is exclude:
                continue
            if e.worker is not None:
                size = resident_bytes(e.worker.pid) or 0
                taken.append(LoadedModel(e.name, e.idle_since, size, e.config.pinned, e.busy))
            elif e.reserved_bytes is not None:
                taken.append(
                    LoadedModel(
                        e.name, e.idle_since, e.reserved_bytes, e.config.pinned, True, loading=True
                    )
                )
        return taken

    async def _evict(self, names: Sequence[str], reason: str) -> None:
        """Unload models the planner chose: all detached at once, before any await, so no
        request starts on one of them while another stops."""
        workers = [self._detach(self._entries[name], reason) for name in names]
        await asyncio.gather(*(worker.stop() for worker in workers if worker is not None))

    async def _evict_over_budget(self, entry: ModelEntry) -> AdmissionPlan | None:
        """Unload idle unpinned models other than `entry` while the measured total is over the
        memory budget. Returns the plan (None without a budget): not ADMIT when nothing idle
        is left to unload and the total is still over. Call it holding the admission lock."""
        budget = self._config.memory_budget
        if budget is None:
            return None
        plan = plan_admission(
            self._room_taken(exclude=entry),
            need_bytes=entry.measured_bytes or 0,
            max_models=None,
            budget=budget,
        )
        if plan.verdict is Verdict.ADMIT:
            await self._evict(plan.evict, f"evicted to make room for {entry.name}")
        return plan

    async def _enforce_memory_budget(self, entry: ModelEntry) -> None:
        """After a load, check the measured total; unload idle models or refuse the new one."""
        async with self._admission_lock:
            plan = await self._evict_over_budget(entry)
            if plan is None or plan.verdict is Verdict.ADMIT:
                return
            others = self._room_taken(exclude=entry)
            used = sum(m.resident_bytes for m in others) + (entry.measured_bytes or 0)
            await self._stop_worker(entry, "it did not fit the memory budget")
        raise ModelUnavailableError(
            f"model {entry.name!r} uses {used} bytes with the other models, over the memory "
            f"budget of {self._config.memory_budget} bytes, and nothing idle can be unloaded "
            f"({plan.reason})",
            param="model",
        )

    def _measure_again(self, entry: ModelEntry, worker: Worker) -> None:
        """Measure a worker after it served embeddings: a GGUF engine creates its embedding
        context on first use, so the model can grow well past what its load measured. Over the
        memory budget, idle other models are unloaded in the background: the request that
        grew it has succeeded, and is neither failed nor held up for that."""
        if entry.worker is not worker:
            return  # unloaded or replaced meanwhile
        measured = resident_bytes(worker.pid)
        if measured is None:
            return
        entry.measured_bytes = measured
        budget = self._config.memory_budget
        if budget is not None and sum(m.resident_bytes for m in self._room_taken(None)) > budget:
            self._spawn(self._shrink_to_budget(entry, worker), f"budget-{entry.name}")

    async def _shrink_to_budget(self, entry: ModelEntry, worker: Worker) -> None:
        async with self._admission_lock:
            if entry.worker is not worker:
                return  # it went away meanwhile, and the room with it
            plan = await self._evict_over_budget(entry)
        if plan is not None and plan.verdict is not Verdict.ADMIT:
            log.warning(
                "model %s grew to %s serving embeddings; the models are over the memory budget "
                "and nothing idle can be unloaded (%s)",
                entry.name,
                _megabytes(entry.measured_bytes),
                plan.reason,
            )

    # -- unloading and crashes -----------------------------------------------------------

    async def _stop_worker(self, entry: ModelEntry, reason: str) -> None:
        worker = self._detach(entry, reason)
        if worker is not None:
            await worker.stop()

    def _detach(self, entry: ModelEntry, reason: str) -> Worker | None:
        """Take the worker out of service (no new request reaches it); the caller stops it."""
        worker, entry.worker = entry.worker, None
        if worker is None:
            return None
        entry.last_exit = reason
        entry.unloaded_on_purpose = True
        entry.keep_alive_override = None
        log.info("unloading model %s (pid %s): %s", entry.name, worker.pid, reason)
        return worker

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
            if entry.restart_task is not None:
                entry.restart_task.cancel()  # one restart loop per model, on the latest crash
            entry.restart_task = self._spawn(self._restart(entry, delay), f"restart-{entry.name}")

    async def _restart(self, entry: ModelEntry, delay_s: float) -> None:
        """Start a crashed model again after `delay_s`; while that fails, retry with backoff.

        What is retried: the restart of a model that was loaded until its worker died. Its
        configuration worked, so a failed restart is most likely passing (memory not yet given
        back, a busy device, no room next to busy models), and a model left failed until
        someone calls the admin API is an outage. A model whose first load fails is not
        retried: that is almost always its configuration (a wrong path, a bad file, a missing
        execution provider), which retrying cannot fix; it stays failed until
        POST /admin/models/{name}/load. Either way it keeps /ready at 503 while it is failed.
        """
        try:
            while True:
                await asyncio.sleep(delay_s)
                if self._closing or entry.worker is not None or entry.unloaded_on_purpose:
                    return  # stopping, loaded meanwhile (a request, an admin), or unloaded
                entry.failure = None  # requests join this load instead of failing at once
                try:
                    # Shielded: replacing this loop must not cancel a load requests wait for.
                    await asyncio.shield(self._begin_load(entry))
                    return
                except ServerShuttingDownError:
                    return
                except (EngineError, OSError) as error:  # OSError: no process could be spawned
                    delay_s = entry.record_failed_restart(time.monotonic())
                    cause = error.message if isinstance(error, EngineError) else str(error)
                    entry.failure = f"restarting after its worker died failed: {cause}"
                    log.error("model %s: %s; retrying in %.0fs", entry.name, entry.failure, delay_s)
        finally:
            entry.retry_at = None

    async def _unload_idle_models(self) -> None:
        while True:
            await asyncio.sleep(REAPER_INTERVAL_S)
            now = time.monotonic()
            for entry in self._entries.values():
                keep_alive = entry.keep_alive
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

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _megabytes(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**20:.0f} MiB"
