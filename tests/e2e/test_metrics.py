"""Metrics move by exactly what the responses reported, on real models and both engines."""

from __future__ import annotations

import httpx
from openai.types import CompletionUsage

from tests.e2e.conftest import ChatMessages, Target
from tests.metrics_text import value

HISTOGRAMS = (
    "slmserve_time_to_first_token_seconds",
    "slmserve_e2e_request_latency_seconds",
    "slmserve_request_queue_time_seconds",
    "slmserve_request_prefill_time_seconds",
    "slmserve_request_decode_time_seconds",
    "slmserve_request_prompt_tokens",
    "slmserve_request_generation_tokens",
)


def scrape(target: Target) -> str:
    response = httpx.get(f"{target.server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def cached(usage: CompletionUsage) -> int:
    details = usage.prompt_tokens_details
    return 0 if details is None or details.cached_tokens is None else details.cached_tokens


def test_counters_match_usage_and_histograms_count_requests(target: Target) -> None:
    labels = {"model": target.model}
    before = scrape(target)
    prompt_tokens = generation_tokens = requests_with_tokens = cached_tokens = 0
    streamed, plain = 3, 2
    for index in range(streamed):
        messages: ChatMessages = [{"role": "user", "content": f"Give me fact number {index}."}]
        chunks = list(
            target.client.chat.completions.create(
                model=target.model,
                messages=messages,
                max_tokens=12 + index,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        prompt_tokens += usage.prompt_tokens
        generation_tokens += usage.completion_tokens
        requests_with_tokens += usage.completion_tokens > 0
        cached_tokens += cached(usage)
    for index in range(plain):
        completion = target.client.chat.completions.create(
            model=target.model,
            messages=[{"role": "user", "content": f"Name {index + 2} animals."}],
            max_tokens=10,
        )
        assert completion.usage is not None
        prompt_tokens += completion.usage.prompt_tokens
        generation_tokens += completion.usage.completion_tokens
        requests_with_tokens += completion.usage.completion_tokens > 0
        cached_tokens += cached(completion.usage)
    after = scrape(target)

    def moved(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert moved("slmserve_prompt_tokens_total") == prompt_tokens
    assert moved("slmserve_generation_tokens_total") == generation_tokens
    assert moved("slmserve_prefix_cache_queries_total") == prompt_tokens
    assert moved("slmserve_prefix_cache_hits_total") == cached_tokens
    assert moved("slmserve_request_success_total") == streamed + plain
    for histogram in HISTOGRAMS:
        assert moved(f"{histogram}_count") == streamed + plain, histogram
    assert moved("slmserve_request_prompt_tokens_sum") == prompt_tokens
    assert moved("slmserve_request_generation_tokens_sum") == generation_tokens
    # One inter-token gap per generated token after each request's first.
    gaps = generation_tokens - requests_with_tokens
    assert moved("slmserve_inter_token_latency_seconds_count") == gaps


def test_state_gauges(target: Target) -> None:
    text = scrape(target)
    labels = {"model": target.model}
    assert value(text, "slmserve_model_state", state="ready", **labels) == 1
    assert value(text, "slmserve_num_requests_running", **labels) == 0
    assert value(text, "slmserve_worker_resident_memory_bytes", **labels) > 50 * 2**20
    assert value(text, "slmserve_loaded_models") == 1
    assert value(text, "slmserve_model_load_duration_seconds_count", **labels) == 1
    assert value(text, "slmserve_worker_restarts_total", **labels) == 0
