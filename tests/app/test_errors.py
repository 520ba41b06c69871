"""The one mapping from engine errors to OpenAI errors."""

from __future__ import annotations

import pytest

from app.errors import from_engine_error
from engines import errors


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.ModelNotFoundError("m"), 404, "model_not_found"),
        (errors.ContextLengthExceededError("c"), 400, "context_length_exceeded"),
        (errors.InvalidRequestError("i"), 400, "invalid_request"),
        (errors.QueueFullError("q", retry_after_s=3), 429, "queue_full"),
        (errors.ModelUnavailableError("u"), 503, "model_unavailable"),
        (errors.ModelLoadError("l"), 503, "model_unavailable"),
        (errors.WorkerCrashedError("w"), 503, "worker_crashed"),
        (errors.ServerShuttingDownError("s"), 503, "shutting_down"),
        (errors.EngineError("e"), 500, "engine_error"),
    ],
)
def test_engine_errors_map_to_one_status_and_code(
    error: errors.EngineError, status: int, code: str
) -> None:
    mapped = from_engine_error(error)
    assert mapped.status_code == status
    assert mapped.detail.code == code
    assert mapped.detail.message == error.message


def test_retry_after_travels_as_a_header() -> None:
    mapped = from_engine_error(errors.QueueFullError("full", retry_after_s=7))
    assert mapped.headers == {"Retry-After": "7"}
    mapped = from_engine_error(errors.ModelUnavailableError("crashing", retry_after_s=4))
    assert (mapped.status_code, mapped.headers) == (503, {"Retry-After": "4"})
    assert from_engine_error(errors.ModelUnavailableError("failed")).headers == {}


def test_errors_survive_the_wire_by_kind() -> None:
    original = errors.ContextLengthExceededError("too long", param="messages")
    rebuilt = errors.EngineError.from_wire(*original.to_wire())
    assert type(rebuilt) is errors.ContextLengthExceededError
    assert (rebuilt.message, rebuilt.param) == ("too long", "messages")
    assert type(errors.EngineError.from_wire("no-such-kind", "x")) is errors.EngineError
