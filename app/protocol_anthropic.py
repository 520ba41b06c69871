"""Anthropic Messages wire format: the request and response models of /v1/messages.

Requests accept unknown fields (the serving layer logs them) and refuse lone surrogates, like
every request body (`app.protocol.RequestBody`). Content blocks are typed loosely (one model
with every block's fields) so that a block slmserve cannot honour (an image, a document) or a
block missing a field gets a precise 400 from the serving layer, naming the block.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.protocol import MAX_STOP_SEQUENCES, OpenAIBaseModel, RequestBody
from engines.sampling import MaxTokens, TopK, TopP

# Anthropic's range (OpenAI's goes to 2).
AnthropicTemperature = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        description="Sampling temperature, 0 to 1; 0 always picks the most likely token.",
    ),
]

# -- request -------------------------------------------------------------------------------


class ContentBlock(OpenAIBaseModel):
    """One content block. Understood: `text`; `tool_use` (assistant turns: id, name, input);
    `tool_result` (user turns: tool_use_id, content, is_error). Any other type is a 400."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None


class MessageParam(OpenAIBaseModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class AnthropicTool(OpenAIBaseModel):
    """A client tool. Server tools (a `type` such as `web_search_20250305`) are a 400."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class AnthropicToolChoice(OpenAIBaseModel):
    """`auto` (the model decides), `any` (some tool must be called), `tool` (the one named),
    `none` (no tool)."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class AnthropicMetadata(OpenAIBaseModel):
    user_id: str | None = None


class MessagesBase(RequestBody):
    """What /v1/messages and /v1/messages/count_tokens share: everything that makes the prompt."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[ContentBlock] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    # Extended thinking: {"type": "enabled", ...} is a 400 (these models do not think).
    thinking: dict[str, Any] | None = None


class CountTokensRequest(MessagesBase):
    """POST /v1/messages/count_tokens."""


class MessagesRequest(MessagesBase):
    """POST /v1/messages. `max_tokens` is required, as Anthropic requires it."""

    max_tokens: MaxTokens
    temperature: AnthropicTemperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    stop_sequences: Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool = False
    metadata: AnthropicMetadata | None = None
    # Meaningless for a local server: accepted and ignored.
    service_tier: str | None = None


# -- responses -----------------------------------------------------------------------------


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class AnthropicUsage(BaseModel):
    """Anthropic's accounting: `input_tokens` are the prompt tokens not read from the prefix
    cache, so the whole prompt is input_tokens + cache_read_input_tokens (+ creation, 0)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class AnthropicMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock | ToolUseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: AnthropicUsage


class CountTokensResponse(BaseModel):
    input_tokens: int


# -- errors --------------------------------------------------------------------------------

AnthropicErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]


class AnthropicErrorDetail(BaseModel):
    type: AnthropicErrorType
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
