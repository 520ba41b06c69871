"""A streaming chat client on the standard library alone (the GPU machine may have no openai,
no httpx): one HTTP/1.1 connection per request, `Connection: close`, chunked or plain bodies.

At thousands of tokens per second a client that builds a pydantic object per chunk becomes the
bottleneck; this one reads `data:` lines and parses each with `json.loads`, nothing more.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from bench.measure import LevelResult, RequestTiming
from bench.workload import MAX_TOKENS, Level, prompt_for

CLIENT_ERRORS = (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError)
REQUEST_TIMEOUT_S = 120.0


class HTTPStatusError(RuntimeError):
    pass


async def _chunks(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)  # the CRLF after each chunk


async def _stream(host: str, port: int, model: str, prompt: str) -> RequestTiming:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    timing = RequestTiming(started=time.perf_counter())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if status != 200:
            text = b"".join([chunk async for chunk in _chunks(reader, chunked)])
            raise HTTPStatusError(f"HTTP {status}: {text[:200]!r}")
        usage_tokens: int | None = None
        pending = b""
        async for chunk in _chunks(reader, chunked):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                event: dict[str, Any] = json.loads(line[5:])
                choices = event.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    timing.token_times.append(time.perf_counter())
                if event.get("usage"):
                    usage_tokens = int(event["usage"]["completion_tokens"])
        timing.tokens = usage_tokens if usage_tokens is not None else len(timing.token_times)
        if not timing.token_times:
            raise HTTPStatusError("the stream carried no tokens")
        return timing
    finally:
        writer.close()


async def one_request(host: str, port: int, model: str, prompt: str) -> RequestTiming:
    return await asyncio.wait_for(_stream(host, port, model, prompt), REQUEST_TIMEOUT_S)


async def run_level(
    system: str, host: str, port: int, model: str, level: Level
) -> tuple[LevelResult, list[str]]:
    """Closed loop: `level.clients` clients, each sending its requests one after another.

    Returns the timings and the client errors (the clients never retry: each one counts).
    """
    timings: list[RequestTiming] = []
    errors: list[str] = []

    async def client(index: int) -> None:
        for round_index in range(level.requests_each):
            prompt = prompt_for(index + round_index * level.clients)
            try:
                timings.append(await one_request(host, port, model, prompt))
            except (*CLIENT_ERRORS, HTTPStatusError) as error:
                errors.append(f"{type(error).__name__}: {error}")

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(level.clients)))
    result = LevelResult(system, level.clients, time.perf_counter() - started, timings)
    result.errors = len(errors)
    return result, errors


def get_status(host: str, port: int, path: str, timeout: float = 2.0) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()
