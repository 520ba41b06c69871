"""API keys: `Authorization: Bearer <key>` on every API route once keys are configured.

Keys come from SLMSERVE_API_KEY (comma-separated) and/or a file (one per line, `#` comments).
Only their SHA-256 digests are kept, and a presented key is compared against every one of them
with hmac.compare_digest: equal-length inputs, no early exit, no timing hint of which key or how
much of it matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import OpenAIError


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The accepted keys (as digests); no keys means the API is open."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    @classmethod
    def load(cls, inline: str | None, key_file: Path | None) -> ApiKeys:
        keys = [key.strip() for key in (inline or "").split(",")]
        if key_file is not None:
            lines = key_file.read_text(encoding="utf-8").splitlines()
            keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
        return cls(key for key in keys if key)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        digest = _digest(presented)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(known, digest)
        return matched


def _unauthorized(message: str) -> OpenAIError:
    return OpenAIError(
        401,
        message,
        type="invalid_request_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


# Always open: probes, and the API description (no secrets in it).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs", "/redoc"})


class ApiKeyMiddleware:
    """Checks the key before routing and body parsing, so a bad key is a 401 whatever the body.

    A pure ASGI middleware: it adds nothing to the streaming path of authorised requests.
    """

    def __init__(self, app: ASGIApp, *, keys: ApiKeys, metrics_require_api_key: bool) -> None:
        self._app = app
        self._keys = keys
        self._metrics_require_api_key = metrics_require_api_key

    def _is_public(self, path: str) -> bool:
        if path == "/metrics":
            return not self._metrics_require_api_key
        return path in PUBLIC_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys.enabled or self._is_public(scope["path"]):
            await self._app(scope, receive, send)
            return
        error = self._refusal(Headers(scope=scope).get("authorization", ""))
        if error is None:
            await self._app(scope, receive, send)
            return
        if scope["path"].startswith("/v1/"):
            scope["app"].state.metrics.count_error("", error.detail.code)
        await error.response()(scope, receive, send)

    def _refusal(self, authorization: str) -> OpenAIError | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized(
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Authorization: Bearer YOUR_KEY'."
            )
        if not self._keys.accepts(token.strip()):
            return _unauthorized("Incorrect API key provided.")
        return None
