"""Ollama wire format: the request and response models of /api/*.

Requests accept unknown fields (the serving layer logs them) and refuse lone surrogates, like
every request body (`app.protocol.RequestBody`). Sampling options reuse the shared field
definitions (engines/sampling.py), so their bounds are the OpenAI API's. Options slmserve cannot
honour are typed loosely here so that the serving layer can refuse a value that would matter
with a precise 400 and let a neutral one pass (clients often send every option's default).

Responses leave out the fields that are None, as Ollama does.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from app.protocol import MAX_STOP_SEQUENCES, OpenAIBaseModel, RequestBody
from engines.sampling import (
    FrequencyPenalty,
    MinP,
    PresencePenalty,
    RepetitionPenalty,
    Seed,
    Temperature,
    TopK,
    TopP,
)

# -- keep_alive ----------------------------------------------------------------------------

# Go's time.ParseDuration, which Ollama uses: "5m", "1h30m", "300ms", "-1m", "0".
_GO_DURATION = re.compile(r"^([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: float | str) -> float:
    """A keep_alive as seconds: a number is seconds, a string a Go duration ("5m", "1h30m");
    negative: keep the model loaded forever; 0: unload it once the request is done."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        return float(text)  # "300", "-1": seconds, as Ollama's clients also send them
    except ValueError:
        pass
    match = _GO_DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use e.g. 5m, 1h30m, 30s, 0 or -1)")
    seconds = sum(float(n) * _GO_UNITS[unit] for n, unit in _GO_PART.findall(text))
    return -seconds if match.group(1) == "-" else seconds


# -- requests ------------------------------------------------------------------------------


class OllamaOptions(OpenAIBaseModel):
    """Ollama's `options`. Mapped: temperature, top_p, top_k, min_p, repeat_penalty
    (repetition_penalty), presence_penalty, frequency_penalty, seed, stop, num_predict
    (max_tokens; -1, -2 or 0: no limit), num_ctx (checked against the model's context length).
    Refused unless neutral: mirostat (0), tfs_z (1), typical_p (1). Ignored (the model's
    configuration in models.yaml decides): repeat_last_n, num_keep, penalize_newline and the
    load-time options (num_gpu, num_thread, num_batch, use_mmap, ...)."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repeat_penalty: RepetitionPenalty | None = None
    presence_penalty: PresencePenalty | None = None
    frequency_penalty: FrequencyPenalty | None = None
    seed: Seed | None = None
    stop: Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | str | None = None
    num_predict: int | None = None
    num_ctx: int | None = Field(default=None, ge=1)
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    tfs_z: float | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    num_keep: int | None = None
    penalize_newline: bool | None = None


class OllamaToolCallFunction(OpenAIBaseModel):
    name: str = Field(min_length=1)
    # Ollama sends an object; a JSON string (OpenAI's habit) is accepted too.
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(OpenAIBaseModel):
    function: OllamaToolCallFunction
    id: str | None = None


class OllamaMessage(OpenAIBaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    # A tool result: the tool that produced it (Ollama has no call ids).
    tool_name: str | None = None
    thinking: str | None = None


class OllamaToolFunction(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class OllamaTool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: OllamaToolFunction


# "json": any JSON object; an object: a JSON schema; "" (or none): free text.
Format = Literal["", "json"] | dict[str, Any]
KeepAlive = float | str


class GenerationBase(RequestBody):
    """What /api/chat and /api/generate share."""

    model: str = Field(min_length=1)
    format: Format | None = None
    options: OllamaOptions | None = None
    # Ollama streams unless told not to.
    stream: bool = True
    keep_alive: KeepAlive | None = None
    # Thinking models only: true (or a level) is a 400, these models do not think.
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(GenerationBase):
    """POST /api/chat. No messages: load the model (keep_alive 0: unload it)."""

    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[OllamaTool] | None = None


class GenerateRequest(GenerationBase):
    """POST /api/generate. No prompt: load the model (keep_alive 0: unload it)."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class EmbedRequest(RequestBody):
    """POST /api/embed."""

    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool | None = None
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None
    dimensions: int | None = Field(default=None, ge=1)


class EmbeddingsRequest(RequestBody):
    """POST /api/embeddings (Ollama's older endpoint)."""

    model: str = Field(min_length=1)
    prompt: str
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None


class ShowRequest(RequestBody):
    """POST /api/show; older clients send the name as `name`."""

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None


# -- responses -----------------------------------------------------------------------------


class OllamaBody(BaseModel):
    """A response body: fields that are None are left out."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ToolCallOut(BaseModel):
    class Function(BaseModel):
        name: str
        arguments: dict[str, Any]

    function: Function


class ResponseMessage(OllamaBody):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[ToolCallOut] | None = None


DoneReason = Literal["stop", "length", "load", "unload"]


class _Reply(OllamaBody):
    """What every /api/chat and /api/generate object carries: a piece of the reply (done false),
    or the last (done true: the reason and the statistics, in nanoseconds, real measurements)."""

    model: str
    created_at: str
    done: bool
    done_reason: DoneReason | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ChatResponse(_Reply):
    """One object of /api/chat."""

    message: ResponseMessage


class GenerateResponse(_Reply):
    """One object of /api/generate, with `response` for the text."""

    response: str


class EmbedResponse(OllamaBody):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class EmbeddingsResponse(BaseModel):
    embedding: list[float]


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: Literal["gguf", "onnx"]
    family: str | None
    families: list[str] | None
    parameter_size: str | None
    quantization_level: str | None


class ListedModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(BaseModel):
    models: list[ListedModel]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int = 0
    context_length: int | None


class PsResponse(BaseModel):
    models: list[RunningModel]


class ShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(BaseModel):
    version: str


class OllamaErrorResponse(BaseModel):
    error: str
