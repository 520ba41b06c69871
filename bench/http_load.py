"""Drive an OpenAI-compatible server with streaming chat requests from concurrent clients."""

from __future__ import annotations

import asyncio
import time

import openai

from bench.measure import LevelResult, RequestTiming
from bench.workload import MAX_TOKENS, Level, prompt_for


async def _one_request(client: openai.AsyncOpenAI, model: str, prompt: str) -> RequestTiming:
    timing = RequestTiming(started=time.perf_counter())
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage_tokens = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            timing.token_times.append(time.perf_counter())
        if chunk.usage is not None:
            usage_tokens = chunk.usage.completion_tokens
    timing.tokens = usage_tokens if usage_tokens is not None else len(timing.token_times)
    return timing


async def run_level(system: str, base_url: str, model: str, level: Level) -> LevelResult:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
    timings: list[RequestTiming] = []
    errors = 0

    async def client_loop(client_index: int) -> None:
        nonlocal errors
        for round_index in range(level.requests_each):
            prompt = prompt_for(client_index + round_index * level.clients)
            try:
                timings.append(await _one_request(client, model, prompt))
            except openai.APIError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(i) for i in range(level.clients)))
    wall = time.perf_counter() - started
    await client.close()
    return LevelResult(system, level.clients, wall, timings, errors)


async def warm_up(base_url: str, model: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
    await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    await client.close()
