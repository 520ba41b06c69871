"""Request body size limit: 413 in the route's envelope, before the body is read when possible.

A pure ASGI middleware: a declared Content-Length over the limit is refused before anything is
read; a chunked body is counted as it arrives and refused the moment it passes the limit. That
error is raised from `receive` as an HTTPException (FastAPI turns anything else raised while it
reads a body into a generic 400), and the usual handler answers it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response, http_error


def _message(limit: int) -> str:
    return f"The request body is larger than this server accepts ({limit} bytes)."


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            error = http_error(413, _message(self._max_bytes))
            if scope["path"].startswith("/v1/"):
                scope["app"].state.metrics.count_error("", error.detail.code, scope["path"])
            await error_response(scope["path"], error)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_bytes:
                    raise HTTPException(413, _message(self._max_bytes))
            return message

        await self._app(scope, counting_receive, send)
