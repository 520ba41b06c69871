"""Typed engine errors.

Engines and the pool raise these; the app maps each class to one OpenAI error in one place
(app/errors.py). Nothing is ever classified by matching message text. Errors raised inside a
worker process cross the pipe as (kind, message, param) and are rebuilt here by kind.
"""

from __future__ import annotations

from typing import ClassVar


class EngineError(Exception):
    """Base class: a failure the engine layer understands and can explain to a client."""

    kind: ClassVar[str] = "engine_error"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # Set when the client should retry later (sent as Retry-After).
        self.retry_after_s = retry_after_s

    def to_wire(self) -> tuple[str, str, str | None]:
        return (self.kind, self.message, self.param)

    @staticmethod
    def from_wire(kind: str, message: str, param: str | None = None) -> EngineError:
        error_class = _ERROR_CLASSES_BY_KIND.get(kind, EngineError)
        return error_class(message, param=param)


class ModelNotFoundError(EngineError):
    """The request named a model that is not configured."""

    kind = "model_not_found"


class InvalidRequestError(EngineError):
    """The request is well-formed but this model or engine cannot do what it asks."""

    kind = "invalid_request"


class ChatTemplateMissingError(InvalidRequestError):
    """A chat request to a model without a chat template (base and embedding models)."""

    kind = "chat_template_missing"


class ContextLengthExceededError(EngineError):
    """Prompt plus requested completion does not fit the model's context window."""

    kind = "context_length_exceeded"


class ModelUnavailableError(EngineError):
    """The model exists but cannot serve now: it failed to load, or does not fit."""

    kind = "model_unavailable"


class ModelLoadError(EngineError):
    """Loading the model failed (bad file, unavailable execution provider, ...)."""

    kind = "model_load_failed"


class WorkerCrashedError(EngineError):
    """The worker process hosting the model died while serving the request."""

    kind = "worker_crashed"


class InternalEngineError(EngineError):
    """Handling one request raised something unexpected; the worker logged it and went on."""

    kind = "internal_error"


class QueueFullError(EngineError):
    """Every slot and queue place of the model is taken; the client should retry later."""

    kind = "queue_full"


class ServerShuttingDownError(EngineError):
    """The server is draining and takes no new work."""

    kind = "shutting_down"


_ERROR_CLASSES_BY_KIND: dict[str, type[EngineError]] = {
    cls.kind: cls
    for cls in (
        EngineError,
        ModelNotFoundError,
        InvalidRequestError,
        ChatTemplateMissingError,
        ContextLengthExceededError,
        ModelUnavailableError,
        ModelLoadError,
        WorkerCrashedError,
        InternalEngineError,
        QueueFullError,
        ServerShuttingDownError,
    )
}
