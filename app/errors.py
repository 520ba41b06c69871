"""One error envelope for every failure: `{"error": {message, type, param, code}}`.

`OpenAIError` is the one exception the HTTP layer raises; engine errors are mapped to it here
and nowhere else. Validation errors become 400 (not FastAPI's 422 shape), unknown routes 404,
anything unexpected a logged 500 — all in the same envelope.

The envelope follows the API a path belongs to, chosen in one place (`error_response`): the
Anthropic Messages routes (/v1/messages...) answer Anthropic's
`{"type": "error", "error": {"type", "message"}}` with the same HTTP status, the Ollama routes
(/api/*) Ollama's `{"error": "message"}`; every other route answers OpenAI's. The auth and
body-limit middlewares render through the same function.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.protocol import ErrorDetail, ErrorResponse
from app.protocol_anthropic import AnthropicErrorDetail, AnthropicErrorResponse, AnthropicErrorType
from engines import errors as engine_errors

log = logging.getLogger("slmserve.errors")


class OpenAIError(Exception):
    """An error to send to the client as an OpenAI error response."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=self.detail).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


# status, OpenAI error type, code — per engine error class (most specific first).
_ENGINE_ERROR_MAP: Sequence[tuple[type[engine_errors.EngineError], int, str, str]] = (
    (engine_errors.ModelNotFoundError, 404, "invalid_request_error", "model_not_found"),
    (
        engine_errors.ContextLengthExceededError,
        400,
        "invalid_request_error",
        "context_length_exceeded",
    ),
    (
        engine_errors.ChatTemplateMissingError,
        400,
        "invalid_request_error",
        "chat_template_missing",
    ),
    (engine_errors.InvalidRequestError, 400, "invalid_request_error", "invalid_request"),
    (engine_errors.QueueFullError, 429, "rate_limit_error", "queue_full"),
    (engine_errors.ModelUnavailableError, 503, "server_error", "model_unavailable"),
    (engine_errors.ModelLoadError, 503, "server_error", "model_unavailable"),
    (engine_errors.WorkerCrashedError, 503, "server_error", "worker_crashed"),
    (engine_errors.ServerShuttingDownError, 503, "server_error", "shutting_down"),
    (engine_errors.InternalEngineError, 500, "server_error", "internal_error"),
    (engine_errors.EngineError, 500, "server_error", "engine_error"),
)


def from_engine_error(error: engine_errors.EngineError) -> OpenAIError:
    """The client-facing form of an engine error."""
    for error_class, status, error_type, code in _ENGINE_ERROR_MAP:
        if isinstance(error, error_class):
            headers = {}
            if error.retry_after_s is not None:
                headers["Retry-After"] = str(error.retry_after_s)
            return OpenAIError(
                status,
                error.message,
                type=error_type,
                param=error.param,
                code=code,
                headers=headers,
            )
    raise AssertionError("EngineError is the last row of the map")  # pragma: no cover


# Pydantic names union branches in error locations ("str", "list[str]", "function-after[...]").
_UNION_BRANCH_TAG = re.compile(r"^(str|int|float|bool|none|list|dict)$|[\[\-]")


def _param(location: Sequence[int | str]) -> str | None:
    parts = [
        str(part)
        for part in location
        if part != "body" and not (isinstance(part, str) and _UNION_BRANCH_TAG.search(part))
    ]
    return ".".join(parts) or None


def _validation_error(exc: RequestValidationError) -> OpenAIError:
    errors = list(exc.errors())
    if not errors:
        return OpenAIError(400, "Invalid request.", code="invalid_value")
    if any(error.get("type") == "json_invalid" for error in errors):
        return OpenAIError(400, "The request body is not valid JSON.", code="invalid_json")
    for error in errors:
        if error.get("type") == "invalid_utf8":  # the location is in the error's context
            where = str((error.get("ctx") or {}).get("param"))
            return OpenAIError(400, error["msg"], param=where, code="invalid_value")
    param = _param(errors[0].get("loc", ()))
    # Of the errors about the same field (one per union branch), a bare type mismatch says least.
    same_field = [error for error in errors if _param(error.get("loc", ())) == param]
    best = min(same_field, key=lambda error: str(error.get("type", "")).endswith("_type"))
    message = best.get("msg", "invalid value")
    text = f"Invalid value for '{param}': {message}" if param else f"Invalid request: {message}"
    others = len({_param(error.get("loc", ())) for error in errors}) - 1
    if others:
        text += f" (and {others} more invalid field{'s' if others > 1 else ''})"
    return OpenAIError(400, text, param=param, code="invalid_value")


# Codes for errors that Starlette raises by HTTP status alone.
_HTTP_STATUS_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def http_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> OpenAIError:
    """The envelope for a plain HTTP error (no route, wrong method, body too large, ...)."""
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return OpenAIError(
        status, message, type=error_type, code=_HTTP_STATUS_CODES.get(status), headers=headers
    )


ANTHROPIC_PREFIX = "/v1/messages"
# Anthropic's error type for each HTTP status slmserve answers with.
_ANTHROPIC_TYPES: dict[int, AnthropicErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def anthropic_error_body(error: OpenAIError) -> dict[str, Any]:
    """The error in Anthropic's shape (its type follows the HTTP status)."""
    status = error.status_code
    fallback: AnthropicErrorType = "invalid_request_error" if status < 500 else "api_error"
    detail = AnthropicErrorDetail(
        type=_ANTHROPIC_TYPES.get(status, fallback), message=error.detail.message
    )
    return AnthropicErrorResponse(error=detail).model_dump()


OLLAMA_PREFIX = "/api/"


def ollama_error_body(error: OpenAIError) -> dict[str, Any]:
    """The error in Ollama's shape: `{"error": message}` (the HTTP status says the rest)."""
    return {"error": error.detail.message}


def error_response(path: str, error: OpenAIError) -> JSONResponse:
    """The error as the API of `path` shapes it: Anthropic's on /v1/messages, Ollama's on
    /api/*, OpenAI's elsewhere."""
    if is_anthropic_path(path):
        body = anthropic_error_body(error)
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)
    if path.startswith(OLLAMA_PREFIX):
        body = ollama_error_body(error)
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)
    return error.response()


def _respond(request: Request, error: OpenAIError) -> JSONResponse:
    """The error response, counted once: by the request's tracker when serving made one."""
    tracker = getattr(request.state, "tracker", None)
    if tracker is not None:
        tracker.failed(error.detail.code)
    elif request.url.path.startswith(("/v1/", OLLAMA_PREFIX)):
        request.app.state.metrics.count_error("", error.detail.code, request.url.path)
    return error_response(request.url.path, error)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception the app can raise into the envelope of the route's API."""

    async def on_openai_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenAIError)
        return _respond(request, exc)

    async def on_engine_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, engine_errors.EngineError)
        return _respond(request, from_engine_error(exc))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _respond(request, _validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _respond(request, http_error(exc.status_code, str(exc.detail), exc.headers))

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        internal = OpenAIError(
            500, "The server had an internal error.", type="server_error", code="internal_error"
        )
        return _respond(request, internal)

    app.add_exception_handler(OpenAIError, on_openai_error)
    app.add_exception_handler(engine_errors.EngineError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
