"""What chat and text completions share: request fields to engine values, and n choices.

A request with `n` choices becomes n generation requests; their events are merged into one
stream tagged with the choice index. Each choice with a seed gets seed + index, so choices
differ yet stay reproducible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

from app.errors import OpenAIError
from app.metrics import RequestTracker
from app.protocol import GenerationFields
from app.settings import ServerSettings
from engines.base import Accepted, Event, Finished, GenerationRequest, TokenEvent
from engines.errors import EngineError
from engines.pool import EnginePool
from engines.sampling import SamplingParams

log = logging.getLogger("slmserve.serving")

ChoiceEvent = tuple[int, Event]


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="unsupported_parameter")


def sampling_from(body: GenerationFields) -> SamplingParams:
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=body.seed,
    )


def logit_bias_from(body: GenerationFields) -> tuple[tuple[int, float], ...]:
    """OpenAI keys logit_bias by token id written as a string."""
    entries = []
    for key, bias in (body.logit_bias or {}).items():
        if not key.lstrip("-").isdigit():
            raise OpenAIError(
                400,
                f"logit_bias keys are token ids; {key!r} is not one.",
                param="logit_bias",
                code="invalid_value",
            )
        entries.append((int(key), bias))
    return tuple(entries)


def check_max_tokens(requested: int | None, param: str, settings: ServerSettings) -> None:
    cap = settings.max_tokens_cap
    if cap is not None and requested is not None and requested > cap:
        raise OpenAIError(
            400,
            f"'{param}' is limited to {cap} on this server; the request asked for {requested}.",
            param=param,
            code="invalid_value",
        )


def choices_of(base: GenerationRequest, count: int) -> list[GenerationRequest]:
    """`count` generation requests for the choices of one API request."""
    if count == 1:
        return [base]
    seed = base.sampling.seed
    return [
        replace(
            base,
            request_id=f"{base.request_id}-{index}",
            sampling=replace(base.sampling, seed=None if seed is None else seed + index),
        )
        for index in range(count)
    ]


async def generate_choices(
    pool: EnginePool, model: str, generations: list[GenerationRequest]
) -> AsyncGenerator[ChoiceEvent, None]:
    """The events of every generation, as they come, tagged with their choice index."""
    if len(generations) == 1:
        async with aclosing(pool.generate(model, generations[0])) as events:
            async for event in events:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | EngineError | None]] = asyncio.Queue()

    async def pump(index: int, generation: GenerationRequest) -> None:
        try:
            async with aclosing(pool.generate(model, generation)) as events:
                async for event in events:
                    queue.put_nowait((index, event))
        except EngineError as error:
            queue.put_nowait((index, error))
        finally:
            queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, EngineError):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:  # a failed or abandoned request takes its other choices down
            task.cancel()


async def collected(events: AsyncGenerator[ChoiceEvent, None]) -> tuple[str, Finished]:
    """The whole text and the Finished event of a one-choice generation."""
    texts: list[str] = []
    finished: Finished | None = None
    async for _, event in events:
        if isinstance(event, TokenEvent):
            texts.append(event.text)
        elif isinstance(event, Finished):
            texts.append(event.text)
            finished = event
    assert finished is not None, "the pool ends every request with Finished or an error"
    return "".join(texts), finished


async def until_all_accepted(
    events: AsyncGenerator[ChoiceEvent, None], choices: int
) -> list[ChoiceEvent]:
    """Read until every choice's prompt is accepted; returns what was read meanwhile."""
    read: list[ChoiceEvent] = []
    accepted = 0
    while accepted < choices:
        item = await anext(events)
        read.append(item)
        accepted += isinstance(item[1], Accepted)
    return read


async def observed(
    events: AsyncGenerator[ChoiceEvent, None], tracker: RequestTracker
) -> AsyncGenerator[ChoiceEvent, None]:
    """The events, each shown to the request's metrics tracker as it passes."""
    async with aclosing(events):
        async for index, event in events:
            tracker.observe(event, index)
            yield index, event
