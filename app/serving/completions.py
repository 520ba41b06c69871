"""Text completions (/v1/completions): raw prompts, no chat template.

A list of prompts gives `n` choices per prompt, numbered prompt by prompt as OpenAI does.
`echo` returns the prompt before the completion; `suffix` asks for fill-in-the-middle, which
the engine grants only for models with FIM tokens; `logprobs` is an integer (alternatives).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Request, Response

from app.errors import OpenAIError
from app.protocol import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    PromptTokensDetails,
    Usage,
)
from app.serving.core import ServingCore
from app.serving.generation import (
    ChoiceEvent,
    check_max_tokens,
    choices_of,
    logit_bias_from,
    sampling_from,
    unsupported,
)
from app.serving.logprobs import completion_logprobs
from app.serving.sse import event
from app.settings import ServerSettings
from engines.base import Finished, GenerationRequest, TokenEvent, TokenLogprob

log = logging.getLogger("slmserve.completions")


def _prompts(body: CompletionRequest) -> list[str]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(item, str) for item in prompt):
        return [item for item in prompt if isinstance(item, str)]
    if not prompt:
        raise OpenAIError(400, "The prompt is empty.", param="prompt", code="invalid_value")
    raise unsupported("prompt", "token-id prompts are not supported; send the prompt as text.")


def plan_completion(
    request_id: str, body: CompletionRequest, settings: ServerSettings
) -> tuple[list[str], list[GenerationRequest]]:
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise unsupported("best_of", "best_of other than n is not supported.")
    if body.echo and body.logprobs is not None:
        raise unsupported("echo", "echo together with logprobs (prompt logprobs) is not supported.")
    check_max_tokens(body.max_tokens, "max_tokens", settings)
    prompts = _prompts(body)
    generations: list[GenerationRequest] = []
    for index, prompt in enumerate(prompts):
        base = GenerationRequest(
            request_id=f"{request_id}-p{index}",
            prompt=prompt,
            suffix=body.suffix,
            max_tokens=body.max_tokens,
            max_tokens_ceiling=settings.max_tokens_cap,
            stop=body.stop_sequences(),
            sampling=sampling_from(body),
            logprobs=body.logprobs,
            logit_bias=logit_bias_from(body),
        )
        generations += choices_of(base, body.n or 1)
    return prompts, generations


def _usage(finished: dict[int, Finished], per_prompt: int) -> Usage:
    prompt = sum(f.prompt_tokens for i, f in finished.items() if i % per_prompt == 0)
    completion = sum(f.completion_tokens for f in finished.values())
    cached = sum(f.cached_prompt_tokens for i, f in finished.items() if i % per_prompt == 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


class CompletionServing:
    """Serves /v1/completions on top of the serving core."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core

    async def create(self, body: CompletionRequest, raw_request: Request) -> Response:
        if unknown := body.unknown_fields():
            log.info("ignoring unknown request fields: %s", ", ".join(unknown))
        request_id = f"cmpl-{uuid.uuid4().hex}"
        tracker = self._core.track(raw_request, body.model, "completions")
        prompts, generations = plan_completion(request_id, body, self._core.settings)

        return await self._core.serve(
            raw_request,
            tracker,
            request_id=request_id,
            model=body.model,
            generations=generations,
            choices_per_prompt=body.n or 1,
            stream=body.stream,
            render_stream=lambda first, events: self._stream(
                body, request_id, prompts, first, events
            ),
            render_answer=lambda events: self._complete(body, request_id, prompts, events),
        )

    async def _complete(
        self,
        body: CompletionRequest,
        request_id: str,
        prompts: list[str],
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> Completion:
        per_prompt = body.n or 1
        count = len(prompts) * per_prompt
        texts: list[list[str]] = [[] for _ in range(count)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(count)]
        finished: dict[int, Finished] = {}
        async for index, item in events:
            if isinstance(item, TokenEvent):
                texts[index].append(item.text)
                if item.logprob is not None:
                    logprobs[index].append(item.logprob)
            elif isinstance(item, Finished):
                texts[index].append(item.text)
                finished[index] = item
        choices = []
        for index in range(count):
            echoed = prompts[index // per_prompt] if body.echo else ""
            choices.append(
                CompletionChoice(
                    text=echoed + "".join(texts[index]),
                    index=index,
                    logprobs=completion_logprobs(logprobs[index], len(echoed))
                    if body.logprobs is not None
                    else None,
                    finish_reason=finished[index].finish_reason,
                )
            )
        return Completion(
            id=request_id,
            model=body.model,
            choices=choices,
            usage=_usage(finished, per_prompt),
        )

    async def _stream(
        self,
        body: CompletionRequest,
        request_id: str,
        prompts: list[str],
        first: list[ChoiceEvent],
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> AsyncIterator[bytes]:
        per_prompt = body.n or 1
        created = int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        exclude = None if include_usage else {"usage"}
        offsets = [0] * (len(prompts) * per_prompt)
        finished: dict[int, Finished] = {}

        def chunk(index: int, text: str, entries: list[TokenLogprob], reason: str | None) -> bytes:
            logprobs = None
            if body.logprobs is not None:
                logprobs = completion_logprobs(entries, offsets[index])
            offsets[index] += len(text)
            choice = CompletionChoice(
                text=text, index=index, logprobs=logprobs, finish_reason=reason
            )
            payload = Completion(id=request_id, created=created, model=body.model, choices=[choice])
            return event(payload.model_dump_json(exclude=exclude))

        def render(index: int, item: object) -> list[bytes]:
            if isinstance(item, TokenEvent):
                entries = [item.logprob] if item.logprob is not None else []
                return [chunk(index, item.text, entries, None)] if item.text or entries else []
            if isinstance(item, Finished):
                finished[index] = item
                rendered = [chunk(index, item.text, [], item.finish_reason)]
                if include_usage and len(finished) == len(offsets):
                    usage = Completion(
                        id=request_id,
                        created=created,
                        model=body.model,
                        choices=[],
                        usage=_usage(finished, per_prompt),
                    )
                    rendered.append(event(usage.model_dump_json()))
                return rendered
            return []

        if body.echo:
            for index in range(len(offsets)):
                yield chunk(index, prompts[index // per_prompt], [], None)
        for index, item in first:
            for payload in render(index, item):
                yield payload
        async for index, item in events:
            for payload in render(index, item):
                yield payload
