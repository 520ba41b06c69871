"""OpenAI Responses API wire format: the request, its input items, the Response object.

Requests accept unknown fields (logged by the serving layer). Input items and tools arrive as
plain objects and are validated one by one by the serving layer against the models here, so that
an item or tool of a kind slmserve does not run (an image, a built-in OpenAI tool) gets a 400
that names it rather than a union mismatch. What the server sends back matches the openai SDK's
types (`openai.types.responses`): `Response`, its output items, `ResponseItemList`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.protocol import OpenAIBaseModel, RequestBody
from engines.sampling import MaxTokens, Temperature, TopP

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]
Json = dict[str, Any]

# Content part types that carry text.
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
FUNCTION_NAME = r"^[A-Za-z0-9_-]+$"


# -- request: input items ------------------------------------------------------------------


class ContentPart(OpenAIBaseModel):
    """One part of an item's content; only text parts (`input_text`, `output_text`) run."""

    type: str
    text: str | None = None


class MessageItemIn(OpenAIBaseModel):
    """A message: OpenAI's easy input message, an input message or an earlier output message."""

    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    status: ItemStatus | None = None


class FunctionCallIn(OpenAIBaseModel):
    """A function call the model made earlier."""

    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    status: ItemStatus | None = None


class FunctionCallOutputIn(OpenAIBaseModel):
    """The result of a function call, sent back by the client."""

    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]
    status: ItemStatus | None = None


InputItemIn = MessageItemIn | FunctionCallIn | FunctionCallOutputIn
INPUT_ITEM_MODELS: dict[str, type[InputItemIn]] = {
    "message": MessageItemIn,
    "function_call": FunctionCallIn,
    "function_call_output": FunctionCallOutputIn,
}


# -- request: tools, text format -----------------------------------------------------------


class FunctionToolIn(OpenAIBaseModel):
    """A function tool, Responses style (flat: no nested `function` object)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceObject(OpenAIBaseModel):
    """`{"type": "function", "name": ...}`; other types name built-in tools."""

    type: str
    name: str | None = None


class TextFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=FUNCTION_NAME)
    description: str | None = None
    # `schema` shadows a BaseModel attribute in pydantic, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAIBaseModel):
    format: TextFormat | None = None
    # A hint to reasoning-sized models; accepted and not acted on.
    verbosity: Literal["low", "medium", "high"] | None = None


Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


# -- request -------------------------------------------------------------------------------


class ResponseCreateRequest(RequestBody):
    model: str = Field(min_length=1)
    # Items are validated one by one by the serving layer (precise 400s, stored as given).
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: Metadata | None = None
    user: str | None = None
    store: bool = True
    previous_response_id: str | None = Field(default=None, min_length=1)
    truncation: Literal["auto", "disabled"] | None = None
    stream: bool = False
    # Defined by OpenAI, not supported: any use other than the default is a 400.
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    # Defined by OpenAI, meaningless here: accepted and ignored. max_tool_calls bounds calls to
    # built-in tools, which slmserve has none of.
    max_tool_calls: int | None = Field(default=None, ge=1)
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    stream_options: dict[str, Any] | None = None


# -- items as the server writes them (output, stored input items) --------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Json] = Field(default_factory=list)


class InputText(BaseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class InputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer"]
    status: ItemStatus = "completed"
    content: list[InputText]


class FunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class FunctionCallOutput(BaseModel):
    id: str
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str
    status: ItemStatus = "completed"


OutputItem = OutputMessage | FunctionCall
ConversationItem = InputMessage | OutputMessage | FunctionCall | FunctionCallOutput


# -- the Response object -------------------------------------------------------------------


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    # One of OpenAI's codes for a failed response: server_error, rate_limit_exceeded,
    # invalid_prompt.
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    background: bool = False
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float | None
    text: Json
    tool_choice: str | Json
    tools: list[Json]
    top_p: float | None
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None = None
    user: str | None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Json]
    first_id: str | None
    last_id: str | None
    has_more: bool
