"""Event-loop responsiveness: /health latency while a ~1,000-token prompt is prefilled."""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.measure import percentile
from bench.workload import long_prompt


async def health_during_prefill(
    base_url: str, model: str, rounds: int = 3
) -> tuple[list[float], int]:
    """Latencies of /health probes sent every 5 ms during long prefills; and prompt tokens."""
    latencies: list[float] = []
    prompt_tokens = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for round_index in range(rounds):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"{round_index} {long_prompt()}"}],
                "max_tokens": 1,
            }
            request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            while not request.done():
                started = time.perf_counter()
                response = await client.get("/health")
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
                await asyncio.sleep(0.005)
            prompt_tokens = (await request).json()["usage"]["prompt_tokens"]
    return latencies, prompt_tokens


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies),
        "probes": float(len(latencies)),
    }
