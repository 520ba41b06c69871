"""/metrics on the fake engine: errors counted once, with bounded labels; token counters."""

from __future__ import annotations

from typing import Any

from app.metrics import ServerMetrics
from engines.base import Finished
from tests.app.conftest import FAKE_MODEL, FakeServer
from tests.fakes import FAIL_MARKER
from tests.metrics_text import value

URL = "/v1/chat/completions"


def chat(content: str = "a b c", **fields: Any) -> dict[str, Any]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **fields}


async def scrape(server: FakeServer) -> str:
    response = await server.client.get("/metrics")
    assert response.status_code == 200
    return response.text


async def test_each_error_is_counted_once_under_its_code(server: FakeServer) -> None:
    await server.client.post(URL, json={**chat(), "model": "gpt-4"})
    await server.client.post(URL, json=chat(temperature=9))
    await server.client.post(URL, json=chat(audio={"voice": "alloy"}))
    await server.client.post(URL, json=chat(" ".join(["w"] * 100)))
    await server.client.post(URL, json=chat(f"x {FAIL_MARKER}", stream=True))
    text = await scrape(server)
    errors = "slmserve_request_errors_total"
    assert value(text, errors, code="model_not_found", model="none") == 1
    assert value(text, errors, code="invalid_value", model="none") == 1
    assert value(text, errors, code="unsupported_parameter", model=FAKE_MODEL) == 1
    assert value(text, errors, code="context_length_exceeded", model=FAKE_MODEL) == 1
    assert value(text, errors, code="engine_error", model=FAKE_MODEL) == 1
    assert value(text, errors) == 5
    assert value(text, "slmserve_request_success_total") == 0
    # The stream that failed after two tokens still counts the work it did.
    assert value(text, "slmserve_generation_tokens_total", model=FAKE_MODEL) == 2
    assert "gpt-4" not in text


async def test_success_by_finish_reason(server: FakeServer) -> None:
    await server.client.post(URL, json=chat("a b c"))
    await server.client.post(URL, json=chat("a b c", max_tokens=1, stream=True))
    text = await scrape(server)
    success = "slmserve_request_success_total"
    assert value(text, success, finished_reason="stop", model=FAKE_MODEL) == 1
    assert value(text, success, finished_reason="length", model=FAKE_MODEL) == 1
    assert value(text, "slmserve_generation_tokens_total", model=FAKE_MODEL) == 4
    assert value(text, "slmserve_prompt_tokens_total", model=FAKE_MODEL) == 6


async def test_pool_state_is_exported(server: FakeServer) -> None:
    text = await scrape(server)
    assert value(text, "slmserve_loaded_models") == 2
    assert value(text, "slmserve_parallel_slots", model=FAKE_MODEL) == 2
    assert value(text, "slmserve_queue_capacity", model=FAKE_MODEL) == 16
    assert value(text, "slmserve_model_state", model=FAKE_MODEL, state="ready") == 1
    assert value(text, "slmserve_model_load_duration_seconds_count", model=FAKE_MODEL) == 1


async def test_embedding_inputs_count_as_prompt_tokens(server: FakeServer) -> None:
    body = {"model": FAKE_MODEL, "input": ["a b c", "d e"]}
    response = await server.client.post("/v1/embeddings", json=body)
    assert response.status_code == 200
    tokens = response.json()["usage"]["prompt_tokens"]
    assert tokens > 0
    await server.client.post("/v1/embeddings", json={**body, "dimensions": 10**6})
    text = await scrape(server)
    assert value(text, "slmserve_prompt_tokens_total", model=FAKE_MODEL) == tokens
    assert value(text, "slmserve_request_success_total", model=FAKE_MODEL) == 1
    errors = "slmserve_request_errors_total"
    assert value(text, errors, model=FAKE_MODEL, code="unsupported_parameter") == 1


async def test_outcomes_carry_the_api_they_came_through(server: FakeServer) -> None:
    await server.client.post(URL, json=chat("a b c"))
    completion = {"model": FAKE_MODEL, "prompt": "a b", "max_tokens": 2}
    await server.client.post("/v1/completions", json=completion)
    await server.client.post("/v1/completions", json={**completion, "model": "gpt-4"})
    text = await scrape(server)
    success = "slmserve_request_success_total"
    assert value(text, success, api="chat_completions", model=FAKE_MODEL) == 1
    assert value(text, success, api="completions", model=FAKE_MODEL) == 1
    errors = "slmserve_request_errors_total"
    assert value(text, errors, api="completions", code="model_not_found") == 1


async def test_prefix_cache_counters_follow_usage(server: FakeServer) -> None:
    await server.client.post(URL, json=chat("a b c"))
    await server.client.post(URL, json=chat("d e", n=2))
    text = await scrape(server)
    # Each prompt once (like usage); the fake engine caches nothing.
    assert value(text, "slmserve_prefix_cache_queries_total", model=FAKE_MODEL) == 5
    assert value(text, "slmserve_prefix_cache_hits_total", model=FAKE_MODEL) == 0


def finished(request_id: str, prompt: int, cached: int) -> Finished:
    return Finished(request_id, "stop", "", prompt, 1, cached_prompt_tokens=cached)


def test_prefix_cache_hits_count_the_cached_prompt_tokens_once_per_prompt() -> None:
    metrics = ServerMetrics()
    # Two choices of one prompt: its tokens once, whatever the second choice found cached.
    two_choices = metrics.track("m", "chat_completions", choices=2, choices_per_prompt=2)
    two_choices.observe(finished("a", prompt=10, cached=7), index=0)
    two_choices.observe(finished("a", prompt=10, cached=9), index=1)
    # Two prompts (a completions request with a list of prompts): each counts.
    two_prompts = metrics.track("m", "completions", choices=2, choices_per_prompt=1)
    two_prompts.observe(finished("b", prompt=4, cached=3), index=0)
    two_prompts.observe(finished("b", prompt=6, cached=0), index=1)
    text = metrics.render().decode()
    assert value(text, "slmserve_prefix_cache_queries_total") == 10 + 4 + 6
    assert value(text, "slmserve_prefix_cache_hits_total") == 7 + 3
    assert value(text, "slmserve_prompt_tokens_total") == 10 + 4 + 6
