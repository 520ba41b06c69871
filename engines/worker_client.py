"""The pool's side of one worker process: start it, talk to it, notice when it dies.

Each worker is `python -m engines.worker` with one end of a socketpair. A reader task routes the
worker's events to one queue per request; a request that leaves early (client gone) sends a
Cancel so the worker frees the slot before its next token. When the process dies, every
in-flight request gets a `worker_crashed` failure at once: nothing waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import AsyncGenerator

from engines.base import EngineInfo, Event, Failed, Finished, GenerationRequest, PromptQuery
from engines.config import ModelConfig
from engines.errors import (
    EngineError,
    ModelLoadError,
    ServerShuttingDownError,
    WorkerCrashedError,
)
from engines.ipc import (
    Cancel,
    Embed,
    Events,
    LoadFailed,
    Query,
    Shutdown,
    Submit,
    Tokenize,
    ToWorker,
    encode,
    read_message,
)
from engines.log_format import LogFormat

log = logging.getLogger("slmserve.pool.worker")


class WorkerProcess:
    """One engine worker subprocess hosting one model."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        log_level: str = "INFO",
        log_format: LogFormat = "text",
        load_timeout_s: float = 600.0,
        engine_factory: str | None = None,
    ) -> None:
        self.config = config
        # module:function the worker builds its engine with (tests inject faults this way).
        self._engine_factory = engine_factory
        self._log_level = log_level
        self._log_format = log_format
        self._load_timeout_s = load_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._streams: dict[str, asyncio.Queue[Event]] = {}
        self._alive = False
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._alive

    async def start(self) -> EngineInfo:
        """Spawn the worker and wait until its model is loaded and warm."""
        parent_end, child_end = socket.socketpair()
        arguments = ["--fd", str(child_end.fileno()), "--config", self.config.model_dump_json()]
        arguments += ["--log-level", self._log_level, "--log-format", self._log_format]
        if self._engine_factory is not None:
            arguments += ["--engine-factory", self._engine_factory]
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "engines.worker",
                *arguments,
                pass_fds=(child_end.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl+C reaches the server, which then drains
                # and stops the workers itself.
                start_new_session=True,
            )
        finally:
            child_end.close()
        try:
            reader, self._writer = await asyncio.open_connection(sock=parent_end)
            message = await asyncio.wait_for(read_message(reader), self._load_timeout_s)
        except asyncio.IncompleteReadError:
            code = await self._process.wait()
            raise ModelLoadError(
                f"the worker for {self.config.name!r} exited with code {code} while loading "
                f"{self.config.path}"
            ) from None
        except TimeoutError:
            self._kill()
            raise ModelLoadError(
                f"loading {self.config.name!r} took longer than {self._load_timeout_s:.0f}s"
            ) from None
        except BaseException:
            self._kill()
            raise
        if isinstance(message, LoadFailed):
            await self._process.wait()
            raise EngineError.from_wire(message.kind, message.message)
        assert not isinstance(message, Events), "a worker sends Loaded or LoadFailed first"
        self._alive = True
        self._reader_task = asyncio.create_task(
            self._route_events(reader), name=f"worker-reader-{self.config.name}"
        )
        return message.info

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        """The events of one request, ending with Finished or Failed."""
        if not self._alive:
            raise WorkerCrashedError(f"the worker for {self.config.name!r} is not running")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._streams[request.request_id] = queue
        ended = False
        try:
            self._send(Submit(request))
            while True:
                event = await queue.get()
                ended = isinstance(event, Finished | Failed)
                yield event
                if ended:
                    return
        finally:
            # No awaits here: this also runs while the consumer's task is being cancelled.
            self._streams.pop(request.request_id, None)
            if not ended and self._alive:
                self._send(Cancel(request.request_id))

    async def embed(self, request_id: str, texts: tuple[str, ...]) -> Event:
        """The worker's answer to an embedding request: Embedded or Failed."""
        return await self._ask(request_id, Embed(request_id, texts))

    async def tokenize(self, request: GenerationRequest) -> Event:
        """The worker's answer to a tokenize request: Tokenized or Failed."""
        return await self._ask(request.request_id, Tokenize(request))

    async def query(self, query: PromptQuery) -> Event:
        """The worker's answer to a prompt query: Tokenized, PromptText or Failed."""
        return await self._ask(query.request_id, Query(query))

    async def _ask(self, request_id: str, message: ToWorker) -> Event:
        """Send one message and wait for the one event that answers it."""
        if not self._alive:
            raise WorkerCrashedError(f"the worker for {self.config.name!r} is not running")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._streams[request_id] = queue
        answered = False
        try:
            self._send(message)
            event = await queue.get()
            answered = True
            return event
        finally:
            self._streams.pop(request_id, None)
            if not answered and self._alive:  # the client left: drop the rest of the work
                self._send(Cancel(request_id))

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to exit, and kill it if it does not within `timeout_s`."""
        if self._process is None:
            return
        self._stopping = True
        if self._alive:
            self._send(Shutdown())
        try:
            await asyncio.wait_for(self._process.wait(), timeout_s)
        except TimeoutError:
            log.warning("worker %s did not exit in %.0fs; killing it", self.pid, timeout_s)
            self._kill()
            await self._process.wait()
        if self._reader_task is not None:
            await self._reader_task
        if self._writer is not None:
            self._writer.close()

    async def wait_exited(self) -> int:
        """Wait until the process has exited (crash, kill or stop); returns its exit code."""
        assert self._process is not None, "start() first"
        return await self._process.wait()

    def _send(self, message: ToWorker) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode(message))

    def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def _route_events(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_message(reader)
                if isinstance(message, Events):
                    for event in message.events:
                        queue = self._streams.get(event.request_id)
                        if queue is not None:  # None: the request was cancelled meanwhile
                            queue.put_nowait(event)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        assert self._process is not None
        code = await self._process.wait()
        self._alive = False
        error: EngineError
        if self._stopping:
            error = ServerShuttingDownError(f"model {self.config.name!r} was stopped")
        else:
            log.error(
                "worker %s for model %r died with exit code %s", self.pid, self.config.name, code
            )
            error = WorkerCrashedError(
                f"the worker serving model {self.config.name!r} died (exit code {code})"
            )
        for request_id, queue in self._streams.items():
            queue.put_nowait(Failed.of(request_id, error))
