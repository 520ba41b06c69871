"""The worker process: hosts one engine and serves the pool over a private socket.

Run as `python -m engines.worker --fd N --config JSON` by engines/worker_client.py. One thread
does everything: between two engine steps it reads whatever the pool sent (new requests,
cancellations), so a cancel takes effect before the next token, and it never touches the model
from two threads (llama.cpp aborts when it is).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from engines.base import (
    Accepted,
    Embedded,
    Engine,
    Event,
    Failed,
    Finished,
    Tokenized,
    unexpected_failure,
)
from engines.config import ModelConfig
from engines.errors import EngineError, ModelLoadError
from engines.ipc import (
    Cancel,
    Embed,
    Events,
    FrameDecoder,
    FromWorker,
    Loaded,
    LoadFailed,
    Query,
    Shutdown,
    Submit,
    Tokenize,
    ToWorker,
    encode,
)
from engines.loader import load_engine
from engines.log_format import formatter

WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s model=%(model)s %(message)s"

log = logging.getLogger("slmserve.worker")

_RECEIVE_BYTES = 1 << 20


@dataclass(slots=True)
class _EmbeddingJob:
    """An embedding request, embedded one input per loop turn so decoding goes on between."""

    request_id: str
    texts: tuple[str, ...]
    vectors: list[list[float]] = field(default_factory=list)
    tokens: int = 0


class WorkerLoop:
    """Alternates between draining the socket, one embedding input, and one engine step.

    Nothing a request does can end this loop: an exception while submitting, stepping or
    embedding becomes a `Failed` for the requests it touched, and the loop goes on. Engines
    isolate failures per request themselves; a step that raises anyway fails every request then
    in the engine (its state is unknown), never the process.
    """

    def __init__(self, engine: Engine, connection: socket.socket) -> None:
        self._engine = engine
        self._connection = connection
        self._decoder = FrameDecoder()
        self._in_flight: set[str] = set()  # accepted, not yet finished or failed
        self._embeddings: deque[_EmbeddingJob] = deque()
        self._outgoing: list[Event] = []  # sent once per loop turn

    def run(self) -> None:
        while True:
            busy = self._engine.has_work() or bool(self._embeddings)
            readable, _, _ = select.select([self._connection], [], [], 0 if busy else None)
            if readable:
                data = self._connection.recv(_RECEIVE_BYTES)
                if not data:
                    log.info("the server closed the connection; exiting")
                    return
                for message in self._decoder.feed(data):
                    if isinstance(message, Shutdown):
                        return
                    self._emit(self._handle(message))
            if self._embeddings:
                self._emit(self._embed_next())
            if self._engine.has_work():
                self._emit(self._step())
            if self._outgoing:
                self._send(Events(self._outgoing))
                self._outgoing = []

    def _handle(self, message: ToWorker | FromWorker) -> list[Event]:
        if isinstance(message, Submit):
            request_id = message.request.request_id
            try:
                return [self._engine.submit(message.request)]
            except Exception as error:
                return [unexpected_failure(request_id, "reading", error)]
        if isinstance(message, Cancel):
            self._cancel(message.request_id)
        elif isinstance(message, Embed):
            self._embeddings.append(_EmbeddingJob(message.request_id, message.texts))
        elif isinstance(message, Tokenize):
            request_id = message.request.request_id
            try:
                return [Tokenized(request_id, self._engine.prompt_ids(message.request))]
            except Exception as error:
                return [unexpected_failure(request_id, "tokenizing", error)]
        elif isinstance(message, Query):
            request_id = message.query.request_id
            try:
                return [self._engine.answer(message.query)]
            except Exception as error:
                return [unexpected_failure(request_id, "reading the prompt of", error)]
        return []

    def _cancel(self, request_id: str) -> None:
        self._in_flight.discard(request_id)
        for job in self._embeddings:
            if job.request_id == request_id:
                self._embeddings.remove(job)
                return
        try:
            self._engine.cancel(request_id)
        except Exception:
            log.exception("cancelling request %s failed", request_id)

    def _embed_next(self) -> list[Event]:
        job = self._embeddings[0]
        index = len(job.vectors)
        try:
            vector, tokens = self._engine.embed_text(job.texts[index], index)
        except Exception as error:
            self._embeddings.popleft()
            return [unexpected_failure(job.request_id, "embedding", error)]
        job.vectors.append(vector)
        job.tokens += tokens
        if len(job.vectors) < len(job.texts):
            return []
        self._embeddings.popleft()
        return [Embedded(job.request_id, job.vectors, job.tokens)]

    def _step(self) -> list[Event]:
        try:
            return self._engine.step()
        except Exception as error:
            log.exception("an engine step failed; failing the requests it was serving")
            failed: list[Event] = [
                unexpected_failure(rid, "generating", error) for rid in self._in_flight
            ]
            for request_id in list(self._in_flight):
                self._cancel(request_id)
            return failed

    def _emit(self, events: list[Event]) -> None:
        """Queue events for the pool, keeping count of the requests in the engine."""
        for event in events:
            if isinstance(event, Accepted):
                self._in_flight.add(event.request_id)
            elif isinstance(event, Finished | Failed):
                self._in_flight.discard(event.request_id)
        self._outgoing.extend(events)

    def _send(self, message: FromWorker) -> None:
        self._connection.sendall(encode(message))


class _ModelTag(logging.Filter):
    """Every record names its model (a `model` field in JSON lines)."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self._model = model

    def filter(self, record: logging.LogRecord) -> bool:
        record.model = self._model
        return True


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="slmserve engine worker (started by the pool)")
    parser.add_argument("--fd", type=int, required=True, help="socket file descriptor")
    parser.add_argument("--config", required=True, help="the model's config as JSON")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--engine-factory",
        default=None,
        help="module:function building the engine from a ModelConfig (tests inject faults)",
    )
    return parser.parse_args(argv)


def _engine_factory(spec: str | None) -> Callable[[ModelConfig], Engine]:
    if spec is None:
        return load_engine
    module, _, name = spec.partition(":")
    factory: Callable[[ModelConfig], Engine] = getattr(importlib.import_module(module), name)
    return factory


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    config = ModelConfig.model_validate_json(args.config)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(args.log_format, WORKER_TEXT_FORMAT))
    handler.addFilter(_ModelTag(config.name))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    connection = socket.socket(fileno=args.fd)
    started = time.perf_counter()
    try:
        engine = _engine_factory(args.engine_factory)(config)
        engine.warmup()
    except EngineError as error:
        log.error("loading failed: %s", error.message)
        connection.sendall(encode(LoadFailed(error.kind, error.message)))
        return 1
    except Exception as error:  # any runtime failure while loading is a failed model
        log.exception("loading failed")
        failure = ModelLoadError(f"{type(error).__name__}: {error}")
        connection.sendall(encode(LoadFailed(failure.kind, failure.message)))
        return 1
    info = engine.info
    seconds = time.perf_counter() - started
    log.info("ready in %.2fs (%s on %s)", seconds, info.engine, info.provider)
    connection.sendall(encode(Loaded(replace(info, load_seconds=seconds))))
    try:
        WorkerLoop(engine, connection).run()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
