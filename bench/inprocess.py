"""The same workload on the engine itself, in this process, with no server in between."""

from __future__ import annotations

import time
from collections import deque

from bench.measure import LevelResult, RequestTiming
from bench.workload import MAX_TOKENS, Level, prompt_for
from engines.base import Engine, Finished, GenerationRequest, Message, TokenEvent
from engines.sampling import SamplingParams


def run_level(system: str, engine: Engine, level: Level) -> LevelResult:
    """Closed loop like the HTTP clients: each finished request is replaced by the next."""
    pending = deque(
        (client, round_index)
        for round_index in range(level.requests_each)
        for client in range(level.clients)
    )
    timings: dict[str, RequestTiming] = {}
    done: list[RequestTiming] = []

    def submit_next() -> None:
        client, round_index = pending.popleft()
        request_id = f"{client}-{round_index}"
        request = GenerationRequest(
            request_id,
            (Message("user", prompt_for(client + round_index * level.clients)),),
            max_tokens=MAX_TOKENS,
            sampling=SamplingParams(temperature=0.0),
        )
        timings[request_id] = RequestTiming(started=time.perf_counter())
        engine.submit(request)

    started = time.perf_counter()
    for _ in range(min(level.clients, len(pending))):
        submit_next()
    while engine.has_work():
        for event in engine.step():
            timing = timings[event.request_id]
            if isinstance(event, TokenEvent) and event.text:
                timing.token_times.append(time.perf_counter())
            elif isinstance(event, Finished):
                timing.tokens = event.completion_tokens
                done.append(timing)
                if pending:
                    submit_next()
    return LevelResult(system, level.clients, time.perf_counter() - started, done)
