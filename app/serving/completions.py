"""Text completions (/v1/completions): raw prompts, no chat template.

A list of prompts gives `n` choices per prompt, numbered prompt by prompt as OpenAI does; a
prompt is text or token ids (taken exactly as sent: evaluation harnesses score their own
tokenization). `echo` returns the prompt before the completion; with `logprobs` it also returns
the prompt tokens' log probabilities (the first one null), and `max_tokens: 0` then scores the
prompt without generating. `suffix` asks for fill-in-the-middle, which the engine grants only
for models with FIM tokens; `logprobs` is an integer (alternatives).
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
from engines.base import (
    DetokenizeQuery,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    PromptText,
    TokenEvent,
    TokenLogprob,
)

Prompt = str | list[int]

log = logging.getLogger("slmserve.completions")


def _prompts(body: CompletionRequest) -> list[Prompt]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    empty = OpenAIError(400, "The prompt is empty.", param="prompt", code="invalid_value")
    if not prompt:
        raise empty
    if all(isinstance(item, str) for item in prompt):
        return [item for item in prompt if isinstance(item, str)]
    if all(isinstance(item, int) for item in prompt):
        return [[item for item in prompt if isinstance(item, int)]]
    prompts = [item for item in prompt if isinstance(item, list)]
    if any(not ids for ids in prompts):
        raise empty
    return list(prompts)


def _check_max_tokens(body: CompletionRequest, settings: ServerSettings) -> None:
    if body.max_tokens == 0 and not body.echo:
        raise OpenAIError(
            400,
            "max_tokens 0 generates nothing: it is allowed only with echo, to score the prompt.",
            param="max_tokens",
            code="invalid_value",
        )
    check_max_tokens(body.max_tokens, "max_tokens", settings)


def plan_completion(
    request_id: str, body: CompletionRequest, settings: ServerSettings
) -> tuple[list[Prompt], list[GenerationRequest]]:
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise unsupported("best_of", "best_of other than n is not supported.")
    _check_max_tokens(body, settings)
    prompts = _prompts(body)
    if body.suffix is not None and not all(isinstance(prompt, str) for prompt in prompts):
        raise unsupported("suffix", "suffix needs a text prompt, not token ids.")
    generations: list[GenerationRequest] = []
    for index, prompt in enumerate(prompts):
        base = GenerationRequest(
            request_id=f"{request_id}-p{index}",
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_ids=None if isinstance(prompt, str) else tuple(prompt),
            suffix=body.suffix,
            max_tokens=body.max_tokens,
            max_tokens_ceiling=settings.max_tokens_cap,
            stop=body.stop_sequences(),
            sampling=sampling_from(body),
            logprobs=body.logprobs,
            prompt_logprobs=body.logprobs if body.echo else None,
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
        echoes = await self._echoed_texts(body, request_id, prompts) if body.echo else []

        return await self._core.serve(
            raw_request,
            tracker,
            request_id=request_id,
            model=body.model,
            generations=generations,
            choices_per_prompt=body.n or 1,
            stream=body.stream,
            render_stream=lambda first, events: self._stream(
                body, request_id, len(prompts), echoes, first, events
            ),
            render_answer=lambda events: self._complete(
                body, request_id, len(prompts), echoes, events
            ),
        )

    async def _echoed_texts(
        self, body: CompletionRequest, request_id: str, prompts: list[Prompt]
    ) -> list[str]:
        """The prompts as text, for echo: token ids are decoded by the model's tokenizer."""
        texts = []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                texts.append(prompt)
                continue
            query = DetokenizeQuery(f"{request_id}-echo{index}", tuple(prompt))
            answer = await self._core.pool.query(body.model, query)
            assert isinstance(answer, PromptText), "a detokenize query's answer"
            texts.append(answer.text)
        return texts

    async def _complete(
        self,
        body: CompletionRequest,
        request_id: str,
        prompt_count: int,
        echoes: list[str],
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> Completion:
        per_prompt = body.n or 1
        count = prompt_count * per_prompt
        texts: list[list[str]] = [[] for _ in range(count)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(count)]
        scored: dict[int, PromptLogprobs] = {}
        finished: dict[int, Finished] = {}
        async for index, item in events:
            if isinstance(item, PromptLogprobs):
                scored[index] = item
            elif isinstance(item, TokenEvent):
                texts[index].append(item.text)
                if item.logprob is not None:
                    logprobs[index].append(item.logprob)
            elif isinstance(item, Finished):
                texts[index].append(item.text)
                finished[index] = item
                if item.end_logprob is not None:
                    logprobs[index].append(item.end_logprob)
        choices = []
        for index in range(count):
            echoed = echoes[index // per_prompt] if body.echo else ""
            choices.append(
                CompletionChoice(
                    text=echoed + "".join(texts[index]),
                    index=index,
                    logprobs=completion_logprobs(logprobs[index], len(echoed), scored.get(index))
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
        prompt_count: int,
        echoes: list[str],
        first: list[ChoiceEvent],
        events: AsyncGenerator[ChoiceEvent, None],
    ) -> AsyncIterator[bytes]:
        per_prompt = body.n or 1
        created = int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        exclude = None if include_usage else {"usage"}
        offsets = [0] * (prompt_count * per_prompt)
        finished: dict[int, Finished] = {}
        # With logprobs the echoed prompt waits for its log probabilities (they come first).
        echo_scored = body.echo and body.logprobs is not None

        def chunk(
            index: int,
            text: str,
            entries: list[TokenLogprob],
            reason: str | None,
            prompt: PromptLogprobs | None = None,
        ) -> bytes:
            logprobs = None
            if body.logprobs is not None:
                logprobs = completion_logprobs(entries, offsets[index], prompt)
            offsets[index] += len(text)
            choice = CompletionChoice(
                text=text, index=index, logprobs=logprobs, finish_reason=reason
            )
            payload = Completion(id=request_id, created=created, model=body.model, choices=[choice])
            return event(payload.model_dump_json(exclude=exclude))

        def render(index: int, item: object) -> list[bytes]:
            if isinstance(item, PromptLogprobs):
                return [chunk(index, echoes[index // per_prompt], [], None, item)]
            if isinstance(item, TokenEvent):
                entries = [item.logprob] if item.logprob is not None else []
                return [chunk(index, item.text, entries, None)] if item.text or entries else []
            if isinstance(item, Finished):
                finished[index] = item
                ended = [item.end_logprob] if item.end_logprob is not None else []
                rendered = [chunk(index, item.text, ended, item.finish_reason)]
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

        if body.echo and not echo_scored:
            for index in range(len(offsets)):
                yield chunk(index, echoes[index // per_prompt], [], None)
        for index, item in first:
            for payload in render(index, item):
                yield payload
        async for index, item in events:
            for payload in render(index, item):
                yield payload
