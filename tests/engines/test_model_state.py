"""Per-model bookkeeping: queue limits, Retry-After guesses, crash backoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.config import ModelConfig
from engines.model_state import MAX_RESTART_BACKOFF_S, ModelEntry, ModelState


def entry(**fields: object) -> ModelEntry:
    return ModelEntry(ModelConfig(name="m", engine="gguf", path=Path("/m.gguf"), **fields))  # type: ignore[arg-type]


def test_queue_is_full_only_when_slots_and_queue_are_taken() -> None:
    model = entry(parallel=1, max_queue=2)
    assert not model.queue_is_full()
    model.running = 1
    model.waiting = 1
    assert not model.queue_is_full()
    model.waiting = 2
    assert model.queue_is_full()


def test_zero_queue_refuses_as_soon_as_slots_are_busy() -> None:
    model = entry(parallel=2, max_queue=0)
    model.running = 1
    assert not model.queue_is_full()
    model.running = 2
    assert model.queue_is_full()


def test_retry_after_grows_with_the_queue_and_request_time() -> None:
    model = entry(parallel=1)
    for _ in range(20):
        model.record_request(4.0)
    model.waiting = 2
    assert model.retry_after_s() == pytest.approx(12, abs=1)
    assert entry().retry_after_s() >= 1


def test_crash_backoff_doubles_within_the_window_and_resets_after() -> None:
    model = entry()
    delays = [model.record_crash(now) for now in (0.0, 1.0, 2.0, 3.0, 4.0)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert model.restarts == 5
    assert model.record_crash(500.0) == 0.0
    for now in range(501, 520):
        model.record_crash(float(now))
    assert model.record_crash(520.0) == MAX_RESTART_BACKOFF_S


def test_state_without_worker() -> None:
    assert entry().state is ModelState.UNLOADED
    failed = entry()
    failed.failure = "bad file"
    assert failed.state is ModelState.FAILED
    assert failed.status(None).reason == "bad file"


def test_failed_restarts_back_off_doubling_up_to_the_cap() -> None:
    model = entry()
    model.failure = "restarting after its worker died failed: out of memory"
    delays = [model.record_failed_restart(100.0) for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_RESTART_BACKOFF_S, MAX_RESTART_BACKOFF_S]
    assert model.failure_reason(100.0) == f"{model.failure}; retrying in 30s"
    assert model.retry_after_failure_s(100.0) == 30
    assert model.state is ModelState.FAILED
    assert model.status(None).reason is not None


def test_a_failure_without_a_retry_says_so_plainly() -> None:
    model = entry()
    model.failure = "bad file"
    assert model.failure_reason(0.0) == "bad file"
    assert model.retry_after_failure_s(0.0) is None
