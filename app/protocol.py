"""OpenAI wire format: the request and response models of the API.

Requests accept unknown fields (clients send vendor extensions); the serving layer logs them.
Fields OpenAI defines but slmserve cannot honour are typed loosely here so that using them gets
a precise 400 from the serving layer instead of a silent ignore.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engines.sampling import (
    FrequencyPenalty,
    MaxTokens,
    MinP,
    PresencePenalty,
    RepetitionPenalty,
    Seed,
    Temperature,
    TopK,
    TopP,
)

MAX_STOP_SEQUENCES = 16
MAX_CHOICES = 128


class OpenAIBaseModel(BaseModel):
    """Base of request models: unknown fields are kept (and logged), never rejected."""

    model_config = ConfigDict(extra="allow")

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


def _first_invalid_text(value: Any, path: str) -> str | None:
    """Where in a parsed JSON body a string cannot be UTF-8 (a lone surrogate), if anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            # A key that is no text is named with its surrogates escaped: the name must print.
            name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
            where = f"{path}.{name}" if path else name
            if (found := _first_invalid_text(key, where)) or (
                found := _first_invalid_text(item, where)
            ):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := _first_invalid_text(item, f"{path}[{index}]"):
                return found
    return None


class RequestBody(OpenAIBaseModel):
    """A whole request body. JSON may escape lone UTF-16 surrogates ("\\ud800"), which are no
    text at all: every string is checked once here, so none reaches a tokenizer."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_invalid_text(cls, data: Any) -> Any:
        if (where := _first_invalid_text(data, "")) is not None:
            raise PydanticCustomError(
                "invalid_utf8",
                "'{param}' holds text that is not valid Unicode (a lone UTF-16 surrogate)",
                {"param": where},
            )
        return data


class _DropsNone(BaseModel):
    """Serialised without the fields that are None (OpenAI leaves unset delta fields out)."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


# -- shared request fields -----------------------------------------------------------------


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class GenerationFields(RequestBody):
    """Fields chat and text completions share."""

    model: str = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: PresencePenalty | None = None
    frequency_penalty: FrequencyPenalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    # Widely used extensions (llama.cpp, vLLM, Ollama clients send them).
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# -- chat completion request ---------------------------------------------------------------


class ContentPart(OpenAIBaseModel):
    """One part of a message's content; only `text` parts are understood."""

    type: str
    text: str | None = None


class ToolCallFunction(OpenAIBaseModel):
    name: str
    arguments: str = "{}"


class ToolCallIn(OpenAIBaseModel):
    """A call the assistant made earlier in the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # `schema` shadows a BaseModel attribute in pydantic, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Defined by OpenAI, not supported: any use other than the default is a 400.
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    # Defined by OpenAI and meaningless for a local server: accepted and ignored.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None


# -- text completion request ---------------------------------------------------------------


class CompletionRequest(GenerationFields):
    # Text, texts, token ids (one prompt) or lists of token ids (several).
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    # OpenAI's default for this endpoint. 0 only with echo: score the prompt, generate nothing.
    max_tokens: (
        Annotated[
            int,
            Field(
                ge=0,
                description="Upper bound on the number of tokens to generate; 0 (with echo) "
                "only scores the prompt.",
            ),
        ]
        | None
    ) = 16
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES)


# -- embeddings request --------------------------------------------------------------------


class EmbeddingRequest(RequestBody):
    model: str = Field(min_length=1)
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=2048)]
        | list[int]
        | list[list[int]]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


# -- shared responses ----------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: None = None


# -- chat responses ------------------------------------------------------------------------


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _without_empty_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("tool_calls"):
            data.pop("tool_calls", None)
        return data


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionDelta(_DropsNone):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_DropsNone):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class ChunkDelta(_DropsNone):
    """A streamed change; unset fields are left out, as OpenAI does (the last delta is `{}`)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -- text completion responses -------------------------------------------------------------


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    # None for the first prompt token (echo): nothing comes before it.
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -- embeddings responses ------------------------------------------------------------------


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# -- models --------------------------------------------------------------------------------


class ModelCard(BaseModel):
    """OpenAI's model object plus what slmserve knows about the model's state."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "slmserve"
    engine: str
    provider: str
    state: str
    state_reason: str | None = None
    preload: bool
    pinned: bool
    keep_alive_s: float
    context_length: int | None = None
    parallel: int
    max_queue: int
    running: int
    waiting: int
    pid: int | None = None
    resident_memory_bytes: int | None = None
    load_seconds: float | None = None
    loaded_at: int | None = None
    last_used: int | None = None
    restarts: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- errors --------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
