"""API keys and the admin key: `Authorization: Bearer <key>`, checked before routing.

API keys (SLMSERVE_API_KEY, comma-separated, and/or SLMSERVE_API_KEY_FILE, one per line, `#`
comments) guard every API route once configured. An API key may also come as `x-api-key: <key>`
(how Anthropic's clients send it), on every API route. The admin routes (`/admin/*`: load, unload)
follow their own rule, since they change what the server serves:

- an admin key is configured (SLMSERVE_ADMIN_KEY / SLMSERVE_ADMIN_KEY_FILE, same formats): only
  an admin key opens them (401 `invalid_admin_key` otherwise; an API key is not enough);
- no admin key, the server listens on a loopback address (127.0.0.0/8, ::1, localhost): they
  follow the API's rule, as before (open, or an API key when API keys are configured);
- no admin key, any other address (0.0.0.0 in a container, ...): 403 `admin_disabled`.

An admin key is not an API key: `/v1/` accepts it only when it is also listed as one.
Only SHA-256 digests of the keys are kept, and a presented key is compared against every one of
them with hmac.compare_digest: equal-length inputs, no early exit, no timing hint of which key or
how much of it matched.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import OpenAIError, error_response

log = logging.getLogger("slmserve.auth")


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


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine: 127.0.0.0/8, ::1, localhost."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another name: it may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str, code: str) -> OpenAIError:
    return OpenAIError(
        401,
        message,
        type="invalid_request_error",
        code=code,
        headers={"WWW-Authenticate": "Bearer"},
    )


# Always open: probes, and the API description (no secrets in it).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs", "/redoc"})
ADMIN_PREFIX = "/admin"


class ApiKeyMiddleware:
    """Checks the API or admin key before routing and body parsing, so a bad key is a 401 (or a
    disabled admin route a 403) whatever the body.

    A pure ASGI middleware: it adds nothing to the streaming path of authorised requests.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        admin_keys: ApiKeys,
        host: str,
        metrics_require_api_key: bool,
    ) -> None:
        self._app = app
        self._keys = keys
        self._admin_keys = admin_keys
        self._metrics_require_api_key = metrics_require_api_key
        self._host = host
        # No admin key and a non-loopback address: the admin routes are refused outright.
        self._admin_disabled = not admin_keys.enabled and not is_loopback(host)
        if self._admin_disabled:
            log.warning(
                "admin routes (/admin/*) answer 403: listening on %s, not a loopback address, "
                "without an admin key; set SLMSERVE_ADMIN_KEY to enable them",
                host,
            )

    def _is_public(self, path: str) -> bool:
        if path == "/metrics":
            return not self._metrics_require_api_key
        return path in PUBLIC_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            error = self._admin_refusal(scope)
        elif not self._keys.enabled or self._is_public(path):
            error = None
        else:
            headers = Headers(scope=scope)
            error = self._api_refusal(
                headers.get("authorization", ""), headers.get("x-api-key", "").strip()
            )
        if error is None:
            await self._app(scope, receive, send)
            return
        if path.startswith("/v1/"):
            scope["app"].state.metrics.count_error("", error.detail.code, path)
        await error_response(path, error)(scope, receive, send)

    def _api_refusal(self, authorization: str, api_key: str = "") -> OpenAIError | None:
        """An API key from `Authorization: Bearer`, or from `x-api-key`; either one opens."""
        presented = [key for key in (_bearer_token(authorization), api_key) if key]
        if not presented:
            return _unauthorized(
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Authorization: Bearer YOUR_KEY' (or as 'x-api-key: YOUR_KEY').",
                "invalid_api_key",
            )
        if not any([self._keys.accepts(key) for key in presented]):  # each one compared
            return _unauthorized("Incorrect API key provided.", "invalid_api_key")
        return None

    def _admin_refusal(self, scope: Scope) -> OpenAIError | None:
        if self._admin_disabled:
            return OpenAIError(
                403,
                f"The admin API is disabled: the server listens on {self._host}, not a loopback "
                "address, and no admin key is set. Set SLMSERVE_ADMIN_KEY (or "
                "SLMSERVE_ADMIN_KEY_FILE) on the server and send the key as "
                "'Authorization: Bearer ADMIN_KEY'.",
                type="invalid_request_error",
                code="admin_disabled",
            )
        authorization = Headers(scope=scope).get("authorization", "")
        if not self._admin_keys.enabled:
            # Loopback without an admin key: the API's rule, as before admin keys existed.
            return self._api_refusal(authorization) if self._keys.enabled else None
        token = _bearer_token(authorization)
        if token is None:
            return _unauthorized(
                "The admin API needs the admin key. Send it in the Authorization header as "
                "'Authorization: Bearer ADMIN_KEY'.",
                "invalid_admin_key",
            )
        if not self._admin_keys.accepts(token):
            return _unauthorized("Incorrect admin key provided.", "invalid_admin_key")
        return None
