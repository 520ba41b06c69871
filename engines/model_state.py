"""What the pool knows about one configured model: its worker, state, slots and history."""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engines.base import EngineInfo
from engines.config import ModelConfig

if TYPE_CHECKING:
    from engines.pool import Worker

# Crashes closer together than this count as one crash loop, and back off.
CRASH_WINDOW_S = 60.0
MAX_RESTART_BACKOFF_S = 30.0


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A snapshot of one model for /v1/models, readiness and admin answers."""

    name: str
    engine: str
    provider: str
    state: ModelState
    reason: str | None
    preload: bool
    pinned: bool
    keep_alive_s: float
    context_length: int | None
    parallel: int
    max_queue: int
    running: int
    waiting: int
    pid: int | None
    resident_bytes: int | None
    load_seconds: float | None
    loaded_at: float | None  # unix time
    last_used: float | None  # unix time
    restarts: int


class ModelEntry:
    """The pool's record of one configured model."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.worker: Worker | None = None
        self.info: EngineInfo | None = None
        self.load_task: asyncio.Task[Worker] | None = None
        # Room a load under way holds in admission: its expected resident bytes. Set when the
        # load is admitted; cleared when the worker is in place (then it is measured) or fails.
        self.reserved_bytes: int | None = None
        self.failure: str | None = None  # a failed load: the model stays failed until reloaded
        # When a failed restart is tried again by itself (monotonic); None: not at all.
        self.retry_at: float | None = None
        self.failed_restarts = 0  # restarts in a row that failed; back to 0 once it loads
        self.restart_task: asyncio.Task[None] | None = None
        self.last_exit: str | None = None  # why the last worker went away
        self.unloaded_on_purpose = False  # idle, evicted or unloaded by an administrator
        self.slots = asyncio.Semaphore(config.parallel)
        self.running = 0
        self.waiting = 0
        self.loaded_at: float | None = None
        self.last_used: float | None = None
        self.idle_since = time.monotonic()
        self.restarts = 0
        self.backoff_until = 0.0
        self.measured_bytes: int | None = None  # resident memory seen after the last load
        # A client's keep_alive for the loaded model (Ollama's per-request keep_alive): replaces
        # config.keep_alive until the model is unloaded; None: the configured one.
        self.keep_alive_override: float | None = None
        self._crash_times: deque[float] = deque()
        self._mean_request_s = 1.0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state(self) -> ModelState:
        if self.worker is not None and self.worker.alive:
            return ModelState.READY
        if self.load_task is not None and not self.load_task.done():
            return ModelState.LOADING
        if self.failure is not None:
            return ModelState.FAILED
        return ModelState.UNLOADED

    @property
    def keep_alive(self) -> float:
        """Idle seconds before the reaper unloads the model (negative: never)."""
        override = self.keep_alive_override
        return self.config.keep_alive if override is None else override

    @property
    def busy(self) -> bool:
        return self.running > 0 or self.waiting > 0

    @property
    def is_loaded(self) -> bool:
        return self.worker is not None

    def serves_traffic(self) -> bool:
        """Fine for readiness: ready, or unloaded on purpose (its next request loads it).

        A model that failed to load is not: a replica that cannot serve its configured models
        must not take traffic, and a rolling update with a broken model then stalls instead of
        replacing working replicas. The failure shows in /ready's body and /v1/models; fix the
        cause and POST /admin/models/{name}/load. (A preloaded or pinned model whose restart
        after a crash failed is also tried again by itself, with backoff: EnginePool._restart.)"""
        return self.state is ModelState.READY or (
            self.state is ModelState.UNLOADED and self.unloaded_on_purpose
        )

    def queue_is_full(self) -> bool:
        free_slots = self.config.parallel - self.running
        return free_slots <= self.waiting and self.waiting >= self.config.max_queue

    def retry_after_s(self) -> int:
        """A guess at when a slot frees up: the queue ahead, at the recent request duration."""
        ahead = self.waiting + 1
        return max(1, math.ceil(self._mean_request_s * ahead / self.config.parallel))

    def record_request(self, duration_s: float) -> None:
        self._mean_request_s = 0.8 * self._mean_request_s + 0.2 * duration_s
        self.last_used = time.time()
        if not self.busy:
            self.idle_since = time.monotonic()

    def record_crash(self, now: float) -> float:
        """Count a crash; returns how long to wait before starting the model again."""
        self.restarts += 1
        self._crash_times.append(now)
        while self._crash_times and now - self._crash_times[0] > CRASH_WINDOW_S:
            self._crash_times.popleft()
        recent = len(self._crash_times)
        delay = 0.0 if recent <= 1 else min(MAX_RESTART_BACKOFF_S, 2.0 ** (recent - 2))
        self.backoff_until = now + delay
        return delay

    def record_failed_restart(self, now: float) -> float:
        """Count a restart that failed; returns how long to wait before trying it again.

        Doubles with each failure in a row (1s, 2s, 4s, ... up to MAX_RESTART_BACKOFF_S) and
        starts over once the model loads. A count of its own, not record_crash's window: a
        model that keeps failing every 30s would otherwise drop out of the window and be
        retried every few seconds forever."""
        self.failed_restarts += 1
        delay = min(MAX_RESTART_BACKOFF_S, 2.0 ** (self.failed_restarts - 1))
        self.retry_at = now + delay
        return delay

    def failure_reason(self, now: float) -> str | None:
        """Why the model is failed, with when it is tried again if it is."""
        if self.failure is None or self.retry_at is None:
            return self.failure
        return f"{self.failure}; retrying in {max(0.0, self.retry_at - now):.0f}s"

    def retry_after_failure_s(self, now: float) -> int | None:
        """Seconds until a failed model is tried again by itself; None if it is not."""
        if self.failure is None or self.retry_at is None:
            return None
        return max(1, math.ceil(self.retry_at - now))

    @asynccontextmanager
    async def all_slots(self) -> AsyncIterator[None]:
        """Hold every slot: in-flight requests finish first, new ones wait behind."""
        for _ in range(self.config.parallel):
            await self.slots.acquire()
        try:
            yield
        finally:
            for _ in range(self.config.parallel):
                self.slots.release()

    def status(self, resident_bytes: int | None) -> ModelStatus:
        state = self.state
        info = self.info
        if state is ModelState.FAILED:
            reason = self.failure_reason(time.monotonic())
        elif state is ModelState.READY:
            reason = None
        else:
            reason = self.last_exit
        loaded = state is ModelState.READY and self.worker is not None
        return ModelStatus(
            name=self.name,
            engine=self.config.engine,
            provider=info.provider if info else self.config.provider,
            state=state,
            reason=reason,
            preload=self.config.preload,
            pinned=self.config.pinned,
            keep_alive_s=self.keep_alive,
            context_length=info.context_length if info else self.config.context_length,
            parallel=self.config.parallel,
            max_queue=self.config.max_queue,
            running=self.running,
            waiting=self.waiting,
            pid=self.worker.pid if loaded and self.worker is not None else None,
            resident_bytes=resident_bytes if loaded else None,
            load_seconds=info.load_seconds if info else None,
            loaded_at=self.loaded_at if loaded else None,
            last_used=self.last_used,
            restarts=self.restarts,
        )
