"""Ollama API (/api/*) -> generation requests -> Ollama objects and NDJSON streams.

A thin adapter on the serving core: /api/chat builds the same `GenerationRequest` a chat
completion would (tools as OpenAI function tools with the model deciding, as Ollama has no
tool_choice; `format` as a JSON constraint), /api/generate a chat turn or, with `raw` (or a
`suffix`), a raw prompt. Streams are NDJSON: one object per line, `done: false` while tokens
come, then one `done: true` object with done_reason and real timings (nanoseconds); an error in
the middle is a last `{"error": ...}` line. Errors before a stream starts are HTTP errors with
Ollama's `{"error": ...}` body (app/errors.py).

Names: the served names as they are; `NAME:latest` also finds `NAME`.

keep_alive: given with a request, it replaces the model's configured keep_alive from the end of
the request until the model is unloaded (0: unload once idle, within a reaper tick; negative:
keep it loaded); left out: the configured keep_alive applies again. A request with no prompt
(no messages) only loads the model, or with keep_alive 0 unloads it, as Ollama's do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

from app import __version__
from app.errors import OpenAIError, ollama_error_body
from app.metrics import RequestTracker
from app.protocol_ollama import (
    ChatRequest,
    ChatResponse,
    DoneReason,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    GenerationBase,
    KeepAlive,
    ListedModel,
    ModelDetails,
    OllamaMessage,
    OllamaOptions,
    PsResponse,
    ResponseMessage,
    RunningModel,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    ToolCallOut,
    VersionResponse,
    keep_alive_seconds,
)
from app.serving.core import CLIENT_CLOSED_REQUEST, Events, ServingCore, StreamFraming
from app.serving.disconnect import ClientDisconnected, until_disconnected
from app.serving.generation import ChoiceEvent, check_max_tokens, collected, unsupported
from app.serving.ollama_models import ModelFacts, iso_time, model_facts
from app.serving.tool_calls import (
    ToolPlan,
    function_tool,
    new_call_id,
    parse_tool_calls,
    plan_function_tools,
)
from app.settings import ServerSettings
from engines.base import Finished, GenerationRequest, JsonConstraint, Message, TokenEvent
from engines.config import ModelConfig
from engines.errors import ModelUnavailableError
from engines.model_state import ModelState, ModelStatus
from engines.sampling import SamplingParams

log = logging.getLogger("slmserve.ollama")

API = "ollama"
NDJSON = "application/x-ndjson"
# expires_at of a model that is never unloaded (pinned, or keep_alive negative).
FOREVER = "9999-12-31T23:59:59Z"
# Options that change sampling in ways these engines do not implement: refused unless neutral.
_NEUTRAL_OPTIONS = {"mirostat": 0, "tfs_z": 1.0, "typical_p": 1.0}
# Options about how the model is loaded or tokens are kept: models.yaml decides; ignored.
_IGNORED_OPTIONS = ("mirostat_tau", "mirostat_eta", "repeat_last_n", "num_keep", "penalize_newline")
# models.yaml sampling defaults under Ollama's names (for /api/show's parameters).
_PARAMETER_NAMES = {"repetition_penalty": "repeat_penalty", "max_tokens": "num_predict"}


def now_iso() -> str:
    return iso_time(time.time())


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def ollama_error_line(error: OpenAIError) -> bytes:
    return _line(ollama_error_body(error))


OLLAMA_FRAMING = StreamFraming(error_event=ollama_error_line, terminator=None, media_type=NDJSON)


def _invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code="invalid_value")


# -- request -> generation -----------------------------------------------------------------


def parse_keep_alive(value: KeepAlive | None) -> float | None:
    if value is None:
        return None
    try:
        return keep_alive_seconds(value)
    except ValueError as error:
        raise _invalid("keep_alive", str(error)) from None


def _sampling(options: OllamaOptions) -> SamplingParams:
    return SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        repetition_penalty=options.repeat_penalty,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        seed=options.seed,
    )


def _check_options(options: OllamaOptions) -> None:
    for name, neutral in _NEUTRAL_OPTIONS.items():
        value = getattr(options, name)
        if value is not None and value != neutral:
            raise unsupported(
                f"options.{name}",
                f"options.{name}: {name} sampling is not supported by this server; leave it "
                f"out (or {neutral}).",
            )
    ignored = [name for name in _IGNORED_OPTIONS if getattr(options, name) is not None]
    ignored += sorted(options.model_extra or {})  # load-time options: models.yaml decides
    if ignored:
        log.info("ignoring options: %s", ", ".join(ignored))


def _max_tokens(options: OllamaOptions, settings: ServerSettings) -> int | None:
    """num_predict as max_tokens: -1 (no limit), -2 (fill the context) and 0 mean no limit."""
    requested = options.num_predict
    if requested is None or requested in (-2, -1, 0):
        return None
    if requested < 0:
        raise _invalid("options.num_predict", "use a positive number, or -1 for no limit.")
    check_max_tokens(requested, "options.num_predict", settings)
    return requested


def _stop(options: OllamaOptions) -> tuple[str, ...]:
    if options.stop is None:
        return ()
    return (options.stop,) if isinstance(options.stop, str) else tuple(options.stop)


def _format(body: GenerationBase, fallback: JsonConstraint | None) -> JsonConstraint | None:
    if body.format is None or body.format == "":
        return fallback
    if body.format == "json":
        return JsonConstraint(param="format")
    if not isinstance(body.format, dict):  # pragma: no cover - the model's type rules it out
        raise _invalid("format", "use 'json' or a JSON schema object.")
    return JsonConstraint(json.dumps(body.format), param="format")


def _check_fields(body: GenerationBase) -> None:
    if body.think not in (None, False, "", "false"):
        raise unsupported("think", "think: these models do not think; leave it out or false.")
    if body.logprobs:
        raise unsupported("logprobs", "logprobs: not supported on /api/*; use /v1/ for them.")


def _tool_arguments(arguments: dict[str, Any] | str, where: str) -> str:
    if isinstance(arguments, dict):
        return json.dumps(arguments)
    try:
        parsed = json.loads(arguments)
    except ValueError:
        raise _invalid(where, "tool call arguments must be a JSON object.") from None
    if not isinstance(parsed, dict):
        raise _invalid(where, "tool call arguments must be a JSON object.")
    return json.dumps(parsed)


def _engine_messages(messages: Sequence[OllamaMessage]) -> tuple[Message, ...]:
    """Ollama's turns as engine messages. Ollama has no call ids: each assistant call gets one,
    and a tool result answers the first open call of its tool_name (or the first open call)."""
    converted: list[Message] = []
    open_calls: list[tuple[str, str]] = []  # (call id, function name) awaiting a result
    for index, message in enumerate(messages):
        if message.images:
            raise unsupported(
                f"messages[{index}].images",
                f"messages[{index}].images: images are not supported: slmserve serves text-only "
                "models.",
            )
        if message.role == "assistant":
            calls = []
            for position, call in enumerate(message.tool_calls or ()):
                where = f"messages[{index}].tool_calls[{position}].function.arguments"
                call_id = call.id or new_call_id()
                function = {
                    "name": call.function.name,
                    "arguments": _tool_arguments(call.function.arguments, where),
                }
                calls.append({"id": call_id, "type": "function", "function": function})
                open_calls.append((call_id, call.function.name))
            converted.append(
                Message(role="assistant", content=message.content, tool_calls=tuple(calls))
            )
        elif message.role == "tool":
            match = next(
                (c for c in open_calls if message.tool_name in (None, c[1])),
                open_calls[0] if open_calls else None,
            )
            if match is not None:
                open_calls.remove(match)
            call_id = match[0] if match else new_call_id()
            converted.append(Message(role="tool", content=message.content, tool_call_id=call_id))
        else:
            converted.append(Message(role=message.role, content=message.content))
    return tuple(converted)


def _base_request(
    request_id: str, body: GenerationBase, settings: ServerSettings
) -> GenerationRequest:
    _check_fields(body)
    options = body.options or OllamaOptions()
    _check_options(options)
    return GenerationRequest(
        request_id=request_id,
        max_tokens=_max_tokens(options, settings),
        max_tokens_ceiling=settings.max_tokens_cap,
        stop=_stop(options),
        sampling=_sampling(options),
    )


def plan_chat(
    request_id: str, body: ChatRequest, settings: ServerSettings
) -> tuple[GenerationRequest, ToolPlan]:
    if len(body.messages) > settings.max_messages:
        raise OpenAIError(
            400,
            f"This server accepts at most {settings.max_messages} messages per request; "
            f"this one has {len(body.messages)}.",
            param="messages",
            code="too_many_messages",
        )
    base = _base_request(request_id, body, settings)
    definitions = [
        function_tool(tool.function.name, tool.function.description, tool.function.parameters)
        for tool in body.tools or ()
    ]
    tools = plan_function_tools(definitions, None)  # Ollama has no tool_choice: "auto"
    generation = replace(
        base,
        messages=_engine_messages(body.messages),
        constraint=_format(body, tools.constraint),
        tools=tools.tools,
    )
    return generation, tools


def plan_generate(
    request_id: str, body: GenerateRequest, settings: ServerSettings
) -> GenerationRequest:
    if body.images:
        raise unsupported("images", "images: not supported: slmserve serves text-only models.")
    if body.template:
        raise unsupported(
            "template",
            "template: slmserve renders the model's own chat template (or the chat_template "
            "set in models.yaml) and takes no Go templates; leave it out, or send raw: true "
            "with a prompt you formatted yourself.",
        )
    if body.context:
        raise unsupported(
            "context",
            "context: slmserve keeps no token context between requests; send the whole "
            "conversation to /api/chat instead.",
        )
    base = replace(_base_request(request_id, body, settings), constraint=_format(body, None))
    prompt = body.prompt or ""
    if body.raw or body.suffix is not None:
        if body.system:
            raise unsupported(
                "system", "system: a raw prompt (raw, or suffix) has no template to put it in."
            )
        return replace(base, prompt=prompt, suffix=body.suffix)
    messages = [Message(role="system", content=body.system)] if body.system else []
    messages.append(Message(role="user", content=prompt))
    return replace(base, messages=tuple(messages))


# -- engine events -> Ollama ---------------------------------------------------------------


@dataclass(frozen=True)
class _Clock:
    """When the request arrived and how long its model took to load for it (nanoseconds)."""

    started_ns: int
    load_ns: int

    def timings(self, finished: Finished) -> dict[str, Any]:
        return {
            "done_reason": finished.finish_reason,
            "total_duration": time.perf_counter_ns() - self.started_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": finished.prompt_tokens,
            "prompt_eval_duration": int(finished.time_to_first_token_s * 1e9),
            "eval_count": finished.completion_tokens,
            "eval_duration": int(finished.generation_s * 1e9),
        }


def _calls_out(text: str, tools: ToolPlan, finished: Finished) -> list[ToolCallOut]:
    """The calls in a finished reply (auto tools: a stopped reply that is a call)."""
    if tools.mode != "auto" or finished.finish_reason != "stop":
        return []
    return [
        ToolCallOut(
            function=ToolCallOut.Function(
                name=call.function.name, arguments=json.loads(call.function.arguments)
            )
        )
        for call in parse_tool_calls(text, tools.names)
    ]


@dataclass
class _Reply:
    """One streamed reply's text: sent as it comes, or, with tools, held when it starts like a
    call (`{` or `<`) and sent at the end as calls or as text."""

    tools: ToolPlan
    held: str = ""
    holding: bool | None = None  # None: not decided yet
    sent: list[str] = field(default_factory=list)

    def text(self, text: str) -> str:
        if self.tools.mode != "auto" or self.holding is False:
            self.sent.append(text)
            return text
        self.held += text
        if self.holding:
            return ""
        start = self.held.lstrip()[:1]
        if not start:
            return ""
        self.holding = start in "{<"
        if self.holding:
            return ""
        text, self.held = self.held, ""
        self.sent.append(text)
        return text

    def finish(self, finished: Finished) -> tuple[str, list[ToolCallOut]]:
        text = self.text(finished.text)
        held, self.held = self.held, ""
        calls = _calls_out(held, self.tools, finished) if held else []
        if held and not calls:
            self.sent.append(held)
            text += held
        return text, calls


# -- serving -------------------------------------------------------------------------------


class OllamaServing:
    """Serves Ollama's /api/* on top of the serving core."""

    def __init__(self, core: ServingCore, models: Sequence[ModelConfig], started_at: int) -> None:
        self._core = core
        self._pool = core.pool
        self._settings = core.settings
        self._configs = {model.name: model for model in models}
        self._started_at = started_at

    # -- names, loading, keep_alive ------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The served model `name` means: itself, or `NAME` for `NAME:latest`."""
        if name not in self._configs and name.endswith(":latest"):
            base = name.removesuffix(":latest")
            if base in self._configs:
                return base
        return name

    async def _warm(self, raw_request: Request, model: str) -> int:
        """Load the model if it is not loaded; the nanoseconds that took (0: it was warm)."""
        if self._pool.status(model).state not in (ModelState.UNLOADED, ModelState.LOADING):
            return 0  # ready, or failed: generation reports that
        started = time.perf_counter_ns()
        await until_disconnected(raw_request, self._pool.load(model))
        return time.perf_counter_ns() - started

    def _check_num_ctx(self, model: str, options: OllamaOptions | None) -> None:
        if options is None or options.num_ctx is None:
            return
        context = self._pool.status(model).context_length
        if context is not None and options.num_ctx > context:
            raise OpenAIError(
                400,
                f"options.num_ctx is {options.num_ctx}, more than the context length of model "
                f"{model!r} ({context} tokens, its context_length in models.yaml); send "
                f"num_ctx up to {context}, or leave it out.",
                param="options.num_ctx",
                code="invalid_value",
            )

    async def _load_only(
        self, raw_request: Request, body: ChatRequest | GenerateRequest, model: str
    ) -> Response:
        """No prompt: load the model (keep_alive 0: unload it), as Ollama does."""
        keep_alive = parse_keep_alive(body.keep_alive)
        status = self._pool.status(model)  # 404 for an unknown model
        reason: DoneReason
        try:
            if keep_alive == 0:
                await until_disconnected(raw_request, self._pool.unload(model))
                reason = "unload"
            else:
                if status.state is ModelState.FAILED:
                    raise ModelUnavailableError(
                        f"model {model!r} failed to load: {status.reason}", param="model"
                    )
                await until_disconnected(raw_request, self._pool.load(model))
                self._pool.keep_alive(model, keep_alive)
                reason = "load"
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        answer: ChatResponse | GenerateResponse
        if isinstance(body, ChatRequest):
            message = ResponseMessage(content="")
            answer = ChatResponse(
                model=body.model,
                created_at=now_iso(),
                message=message,
                done=True,
                done_reason=reason,
            )
        else:
            answer = GenerateResponse(
                model=body.model, created_at=now_iso(), response="", done=True, done_reason=reason
            )
        if body.stream:
            return Response(answer.model_dump_json() + "\n", media_type=NDJSON)
        return Response(answer.model_dump_json(), media_type="application/json")

    # -- chat and generate ---------------------------------------------------------------

    async def chat(self, body: ChatRequest, raw_request: Request) -> Response:
        started = time.perf_counter_ns()
        self._log_unknown(body)
        model = self.resolve(body.model)
        if not body.messages:
            return await self._load_only(raw_request, body, model)
        tracker = self._core.track(raw_request, model, API)
        keep_alive = parse_keep_alive(body.keep_alive)
        request_id = f"ollama-chat-{uuid.uuid4().hex}"
        generation, tools = plan_chat(request_id, body, self._settings)
        return await self._serve(
            raw_request,
            tracker,
            body,
            model,
            generation,
            keep_alive,
            started,
            render_stream=lambda clock, first, events: self._chat_stream(
                body, request_id, clock, tools, first, events
            ),
            render_answer=lambda clock, events: self._chat_answer(
                body, request_id, clock, tools, events
            ),
        )

    async def generate(self, body: GenerateRequest, raw_request: Request) -> Response:
        started = time.perf_counter_ns()
        self._log_unknown(body)
        model = self.resolve(body.model)
        if not body.prompt and body.suffix is None:
            return await self._load_only(raw_request, body, model)
        tracker = self._core.track(raw_request, model, API)
        keep_alive = parse_keep_alive(body.keep_alive)
        request_id = f"ollama-gen-{uuid.uuid4().hex}"
        generation = plan_generate(request_id, body, self._settings)
        return await self._serve(
            raw_request,
            tracker,
            body,
            model,
            generation,
            keep_alive,
            started,
            render_stream=lambda clock, first, events: self._generate_stream(
                body, request_id, clock, first, events
            ),
            render_answer=lambda clock, events: self._generate_answer(
                body, request_id, clock, events
            ),
        )

    async def _serve(
        self,
        raw_request: Request,
        tracker: RequestTracker,
        body: GenerationBase,
        model: str,
        generation: GenerationRequest,
        keep_alive: float | None,
        started_ns: int,
        *,
        render_stream: Callable[[_Clock, list[ChoiceEvent], Events], AsyncIterator[bytes]],
        render_answer: Callable[[_Clock, Events], Awaitable[BaseModel]],
    ) -> Response:
        """Load the model (timed), then run the request on the core; the request's keep_alive
        takes over when it ends."""
        try:
            load_ns = await self._warm(raw_request, model)
        except ClientDisconnected:
            tracker.aborted()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        self._check_num_ctx(model, body.options)
        clock = _Clock(started_ns, load_ns)

        async def streamed(first: list[ChoiceEvent], events: Events) -> AsyncIterator[bytes]:
            try:
                async for chunk in render_stream(clock, first, events):
                    yield chunk
            finally:
                self._pool.keep_alive(model, keep_alive)

        async def answered(events: Events) -> BaseModel:
            try:
                return await render_answer(clock, events)
            finally:
                self._pool.keep_alive(model, keep_alive)

        return await self._core.serve(
            raw_request,
            tracker,
            request_id=generation.request_id,
            model=model,
            generations=[generation],
            choices_per_prompt=1,
            stream=body.stream,
            render_stream=streamed,
            render_answer=answered,
            framing=OLLAMA_FRAMING,
        )

    def _log_unknown(self, body: GenerationBase) -> None:
        if unknown := body.unknown_fields():
            log.info("ignoring unknown request fields: %s", ", ".join(unknown))

    def _log_finished(self, request_id: str, model: str, finished: Finished, text: str) -> None:
        self._core.log_finished(request_id, model, None, finished, text)

    async def _chat_answer(
        self,
        body: ChatRequest,
        request_id: str,
        clock: _Clock,
        tools: ToolPlan,
        events: Events,
    ) -> ChatResponse:
        text, finished = await collected(events)
        self._log_finished(request_id, body.model, finished, text)
        calls = _calls_out(text, tools, finished)
        message = ResponseMessage(content="" if calls else text, tool_calls=calls or None)
        return ChatResponse(
            model=body.model,
            created_at=now_iso(),
            message=message,
            done=True,
            **clock.timings(finished),
        )

    async def _generate_answer(
        self,
        body: GenerateRequest,
        request_id: str,
        clock: _Clock,
        events: Events,
    ) -> GenerateResponse:
        text, finished = await collected(events)
        self._log_finished(request_id, body.model, finished, text)
        return GenerateResponse(
            model=body.model,
            created_at=now_iso(),
            response=text,
            done=True,
            **clock.timings(finished),
        )

    async def _chat_stream(
        self,
        body: ChatRequest,
        request_id: str,
        clock: _Clock,
        tools: ToolPlan,
        first: list[ChoiceEvent],
        events: Events,
    ) -> AsyncIterator[bytes]:
        reply = _Reply(tools)

        def chunk(text: str, calls: list[ToolCallOut] | None = None) -> bytes:
            message = ResponseMessage(content=text, tool_calls=calls or None)
            return _line(
                {
                    "model": body.model,
                    "created_at": now_iso(),
                    "message": message.model_dump(),
                    "done": False,
                }
            )

        async for _, event in _all(first, events):
            if isinstance(event, TokenEvent):
                if text := reply.text(event.text):
                    yield chunk(text)
            elif isinstance(event, Finished):
                text, calls = reply.finish(event)
                if text or calls:
                    yield chunk(text, calls)
                self._log_finished(request_id, body.model, event, "".join(reply.sent))
                done = ChatResponse(
                    model=body.model,
                    created_at=now_iso(),
                    message=ResponseMessage(content=""),
                    done=True,
                    **clock.timings(event),
                )
                yield done.model_dump_json().encode() + b"\n"

    async def _generate_stream(
        self,
        body: GenerateRequest,
        request_id: str,
        clock: _Clock,
        first: list[ChoiceEvent],
        events: Events,
    ) -> AsyncIterator[bytes]:
        sent: list[str] = []

        def chunk(text: str) -> bytes:
            sent.append(text)
            payload = {"model": body.model, "created_at": now_iso(), "response": text}
            return _line({**payload, "done": False})

        async for _, event in _all(first, events):
            if isinstance(event, TokenEvent) and event.text:
                yield chunk(event.text)
            elif isinstance(event, Finished):
                if event.text:
                    yield chunk(event.text)
                self._log_finished(request_id, body.model, event, "".join(sent))
                done = GenerateResponse(
                    model=body.model,
                    created_at=now_iso(),
                    response="",
                    done=True,
                    **clock.timings(event),
                )
                yield done.model_dump_json().encode() + b"\n"

    # -- embeddings ----------------------------------------------------------------------

    async def _embed(
        self,
        raw_request: Request,
        model: str,
        texts: tuple[str, ...],
        options: OllamaOptions | None,
        keep_alive: KeepAlive | None,
    ) -> tuple[list[list[float]], int, int] | Response:
        """Vectors, prompt tokens and load nanoseconds; or the 499 for a client that left."""
        tracker = self._core.track(raw_request, model, "ollama")
        seconds = parse_keep_alive(keep_alive)
        if options is not None:
            _check_options(options)
        try:
            load_ns = await self._warm(raw_request, model)
            self._check_num_ctx(model, options)
            request_id = f"ollama-embd-{uuid.uuid4().hex}"
            result = await until_disconnected(
                raw_request, self._pool.embed(model, request_id, texts)
            )
        except ClientDisconnected:
            tracker.aborted()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        tracker.embedded(result.prompt_tokens)
        self._pool.keep_alive(model, seconds)
        return result.vectors, result.prompt_tokens, load_ns

    async def embed(self, body: EmbedRequest, raw_request: Request) -> Response:
        started = time.perf_counter_ns()
        texts = (body.input,) if isinstance(body.input, str) else tuple(body.input)
        if not texts:
            raise _invalid("input", "the input is empty.")
        model = self.resolve(body.model)
        result = await self._embed(raw_request, model, texts, body.options, body.keep_alive)
        if isinstance(result, Response):
            return result
        vectors, tokens, load_ns = result
        width = len(vectors[0])
        if body.dimensions is not None and body.dimensions != width:
            raise unsupported(
                "dimensions",
                f"dimensions: model {body.model!r} gives {width}-dimensional embeddings; it "
                "cannot shorten them.",
            )
        answer = EmbedResponse(
            model=body.model,
            embeddings=vectors,
            total_duration=time.perf_counter_ns() - started,
            load_duration=load_ns,
            prompt_eval_count=tokens,
        )
        return Response(answer.model_dump_json(), media_type="application/json")

    async def embeddings(self, body: EmbeddingsRequest, raw_request: Request) -> Response:
        if not body.prompt:
            raise _invalid("prompt", "the prompt is empty.")
        model = self.resolve(body.model)
        result = await self._embed(
            raw_request, model, (body.prompt,), body.options, body.keep_alive
        )
        if isinstance(result, Response):
            return result
        answer = EmbeddingsResponse(embedding=result[0][0])
        return Response(answer.model_dump_json(), media_type="application/json")

    # -- models --------------------------------------------------------------------------

    async def _facts(self, configs: Sequence[ModelConfig]) -> dict[str, ModelFacts]:
        def read() -> dict[str, ModelFacts]:
            return {config.name: model_facts(config) for config in configs}

        return await asyncio.to_thread(read)

    def _details(self, config: ModelConfig, facts: ModelFacts) -> ModelDetails:
        return ModelDetails(
            format=config.engine,
            family=facts.family,
            families=[facts.family] if facts.family else None,
            parameter_size=facts.parameter_size,
            quantization_level=facts.quantization,
        )

    def _modified_at(self, facts: ModelFacts) -> str:
        return iso_time(facts.modified_at if facts.modified_at is not None else self._started_at)

    async def tags(self) -> TagsResponse:
        facts = await self._facts(list(self._configs.values()))
        return TagsResponse(
            models=[
                ListedModel(
                    name=name,
                    model=name,
                    modified_at=self._modified_at(facts[name]),
                    size=facts[name].size,
                    digest=facts[name].digest,
                    details=self._details(config, facts[name]),
                )
                for name, config in self._configs.items()
            ]
        )

    async def ps(self) -> PsResponse:
        loaded = [s for s in self._pool.statuses() if s.state is ModelState.READY]
        facts = await self._facts([self._configs[status.name] for status in loaded])
        return PsResponse(
            models=[
                RunningModel(
                    name=status.name,
                    model=status.name,
                    size=status.resident_bytes or facts[status.name].size,
                    digest=facts[status.name].digest,
                    details=self._details(self._configs[status.name], facts[status.name]),
                    expires_at=_expires_at(status),
                    context_length=status.context_length,
                )
                for status in loaded
            ]
        )

    async def show(self, body: ShowRequest) -> ShowResponse:
        name = body.model or body.name
        if not name:
            raise _invalid("model", "name the model to show.")
        model = self.resolve(name)
        status = self._pool.status(model)  # 404 for an unknown model
        config = self._configs[model]
        facts = (await self._facts([config]))[model]
        context = status.context_length or facts.context_length
        parameters = _parameters(config, context)
        template = facts.template or ""
        info = {
            **facts.info,
            "slmserve.engine": config.engine,
            "slmserve.provider": status.provider,
            "slmserve.context_length": context,
        }
        capabilities = ["completion", "tools"] + (["embedding"] if config.engine == "gguf" else [])
        modelfile = "\n".join(
            [
                "# slmserve serves this model as configured in models.yaml.",
                f"FROM {config.path}",
                f'TEMPLATE """{template}"""',
                *(f"PARAMETER {line}" for line in parameters),
            ]
        )
        return ShowResponse(
            modelfile=modelfile,
            parameters="\n".join(parameters),
            template=template,
            details=self._details(config, facts),
            model_info=info,
            capabilities=capabilities,
            modified_at=self._modified_at(facts),
        )

    @staticmethod
    def version() -> VersionResponse:
        return VersionResponse(version=__version__)


def _parameters(config: ModelConfig, context: int | None) -> list[str]:
    """The model's defaults (models.yaml) as Ollama's "name value" parameter lines."""
    values: dict[str, Any] = {} if context is None else {"num_ctx": context}
    for name, value in config.defaults.model_dump(exclude_none=True).items():
        values[_PARAMETER_NAMES.get(name, name)] = value
    return [f"{name:<30} {value}" for name, value in values.items()]


def _expires_at(status: ModelStatus) -> str:
    """When the idle model will be unloaded, by its keep_alive."""
    keep_alive = status.keep_alive_s
    if status.pinned or keep_alive < 0:
        return FOREVER
    busy = status.running or status.waiting
    last = None if busy else (status.last_used or status.loaded_at)
    try:
        return iso_time((last or time.time()) + keep_alive)
    except (OverflowError, ValueError, OSError):  # a keep_alive of centuries
        return FOREVER


async def _all(first: list[ChoiceEvent], events: Events) -> AsyncIterator[ChoiceEvent]:
    for item in first:
        yield item
    async for item in events:
        yield item
