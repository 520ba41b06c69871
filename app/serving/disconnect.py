"""Stop waiting for work whose client has gone.

A plain (non-streaming) endpoint keeps running after its client disconnects; for a generation
that would hold a model slot for nothing. `until_disconnected` races the work against the
connection's `http.disconnect` and cancels the work (freeing its queue place or slot) when the
client leaves first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the work finished."""


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read by now, so the only message left to receive is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientDisconnected (with `work` cancelled) if the client leaves."""
    work_task = asyncio.ensure_future(work)
    disconnect_task = asyncio.create_task(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {work_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED
        )
    except BaseException:  # we were cancelled ourselves
        work_task.cancel()
        disconnect_task.cancel()
        raise
    if work_task in done:
        disconnect_task.cancel()
        return work_task.result()
    work_task.cancel()
    # Let the work's cleanup (slot release, cancel sent to the worker) finish first.
    with contextlib.suppress(asyncio.CancelledError):
        await work_task
    raise ClientDisconnected()
