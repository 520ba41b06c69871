"""The worker process: hosts one engine and serves the pool over a private socket.

Run as `python -m engines.worker --fd N --config JSON` by engines/worker_client.py. One thread
does everything: between two engine steps it reads whatever the pool sent (new requests,
cancellations), so a cancel takes effect before the next token, and it never touches the model
from two threads (llama.cpp aborts when it is).
"""

from __future__ import annotations

import argparse
import logging
import select
import socket
import sys
import time
from dataclasses import replace

from engines.base import Engine, Event, Failed
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
    Shutdown,
    Submit,
    encode,
)
from engines.loader import load_engine
from engines.log_format import formatter

WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s model=%(model)s %(message)s"

log = logging.getLogger("slmserve.worker")

_RECEIVE_BYTES = 1 << 20


class WorkerLoop:
    """Alternates between draining the socket and stepping the engine."""

    def __init__(self, engine: Engine, connection: socket.socket) -> None:
        self._engine = engine
        self._connection = connection
        self._decoder = FrameDecoder()

    def run(self) -> None:
        outgoing: list[Event] = []
        while True:
            busy = self._engine.has_work()
            readable, _, _ = select.select([self._connection], [], [], 0 if busy else None)
            if readable:
                data = self._connection.recv(_RECEIVE_BYTES)
                if not data:
                    log.info("the server closed the connection; exiting")
                    return
                for message in self._decoder.feed(data):
                    if isinstance(message, Submit):
                        outgoing.append(self._engine.submit(message.request))
                    elif isinstance(message, Cancel):
                        self._engine.cancel(message.request_id)
                    elif isinstance(message, Embed):
                        outgoing.append(self._embed(message))
                    elif isinstance(message, Shutdown):
                        return
            if self._engine.has_work():
                outgoing.extend(self._engine.step())
            if outgoing:
                self._send(Events(outgoing))
                outgoing = []

    def _embed(self, message: Embed) -> Event:
        try:
            return self._engine.embed(message.request_id, message.texts)
        except EngineError as error:
            return Failed.of(message.request_id, error)

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
    return parser.parse_args(argv)


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
        engine = load_engine(config)
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
