"""Messages between the pool (parent) and a worker process, and their framing.

One private socketpair per worker carries length-prefixed pickles of the small dataclasses below.
Pickle is safe here: both ends are this program and the socket is never reachable by anyone else.
A step's events travel as one message, so per-token IPC cost is one small write.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass

from engines.base import EngineInfo, Event, GenerationRequest, PromptQuery

_HEADER = struct.Struct("!I")


# Parent -> worker.
@dataclass(slots=True)
class Submit:
    request: GenerationRequest


@dataclass(slots=True)
class Cancel:
    request_id: str


@dataclass(slots=True)
class Embed:
    request_id: str
    texts: tuple[str, ...]


@dataclass(slots=True)
class Tokenize:
    request: GenerationRequest


@dataclass(slots=True)
class Query:
    """A prompt query (tokenize, detokenize, render the template): answered by one event."""

    query: PromptQuery


@dataclass(slots=True)
class Shutdown:
    pass


# Worker -> parent.
@dataclass(slots=True)
class Loaded:
    info: EngineInfo


@dataclass(slots=True)
class LoadFailed:
    kind: str
    message: str


@dataclass(slots=True)
class Events:
    events: list[Event]


ToWorker = Submit | Cancel | Embed | Tokenize | Query | Shutdown
FromWorker = Loaded | LoadFailed | Events


def encode(message: ToWorker | FromWorker) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into messages (for the worker's non-blocking reads)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ToWorker | FromWorker]:
        self._buffer.extend(data)
        messages: list[ToWorker | FromWorker] = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(self._buffer[_HEADER.size : end]))
            del self._buffer[:end]
        return messages


async def read_message(reader: asyncio.StreamReader) -> FromWorker:
    """The next message from a worker; asyncio.IncompleteReadError when it has gone."""
    header = await reader.readexactly(_HEADER.size)
    (length,) = _HEADER.unpack(header)
    message: FromWorker = pickle.loads(await reader.readexactly(length))
    return message
