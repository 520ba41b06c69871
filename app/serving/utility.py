"""Prompt utilities: /tokenize, /detokenize, /apply-template and /tokenizer_info.

The model's own tokenizer and chat template answer, in its worker, between two decoding steps
(no slot is taken): what /tokenize returns for messages is exactly the prompt a chat request
with the same messages and tools becomes, because it is planned by the same code
(`plan_chat`). The request and answer shapes follow vLLM's endpoints, which evaluation
harnesses call (lm-evaluation-harness's remote tokenizer sends `add_special_tokens` and no
`model`): `model` may be left out when the server serves a single model.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from app.errors import OpenAIError
from app.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice, RequestBody, Tool
from app.serving.chat import plan_chat
from app.settings import ServerSettings
from engines.base import (
    DetokenizeQuery,
    GenerationRequest,
    InfoQuery,
    PromptText,
    RenderQuery,
    Tokenized,
    TokenizeQuery,
    TokenizerInfo,
)
from engines.pool import EnginePool

# -- requests ------------------------------------------------------------------------------


class _ModelField(RequestBody):
    model: str | None = Field(
        default=None, min_length=1, description="The served model; optional with a single one."
    )


class _ChatFields(_ModelField):
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None


class TokenizeRequest(_ChatFields):
    """Raw text (`prompt`) or a chat (`messages`, with `tools`) to tokenize."""

    prompt: str | None = None
    # Raw prompts: whether the model's BOS is added as for generation (default: yes).
    add_special: bool | None = None
    add_special_tokens: bool | None = Field(default=None, description="vLLM's name of add_special")
    with_pieces: bool = Field(default=False, description="Also return each token's text.")


class DetokenizeRequest(_ModelField):
    tokens: list[int]


class ApplyTemplateRequest(_ChatFields):
    pass


# -- answers -------------------------------------------------------------------------------


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int | None
    pieces: list[str] | None = None


class PromptResponse(BaseModel):
    prompt: str


class TokenizerInfoResponse(BaseModel):
    model: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None = None
    max_model_len: int


class UtilityServing:
    """Answers the prompt utility endpoints through the pool's prompt queries."""

    def __init__(self, pool: EnginePool, settings: ServerSettings) -> None:
        self._pool = pool
        self._settings = settings

    def _model(self, requested: str | None) -> str:
        if requested is not None:
            return requested
        names = [status.name for status in self._pool.statuses()]
        if len(names) == 1:
            return names[0]
        raise OpenAIError(
            400,
            f"'model' is required: this server serves {len(names)} models ({', '.join(names)}).",
            param="model",
            code="invalid_value",
        )

    def _chat(self, model: str, body: _ChatFields, request_id: str) -> GenerationRequest:
        """The generation request a chat request with these messages and tools becomes."""
        try:
            chat = ChatCompletionRequest(
                model=model,
                messages=body.messages or [],
                tools=body.tools,
                tool_choice=body.tool_choice,
            )
        except ValidationError as error:  # what a chat request would be refused for
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or None
            raise OpenAIError(400, first["msg"], param=where, code="invalid_value") from error
        generations, _ = plan_chat(request_id, chat, self._settings)
        return generations[0]

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        model = self._model(body.model)
        request_id = f"tok-{uuid.uuid4().hex}"
        if (body.prompt is None) == (body.messages is None):
            raise OpenAIError(
                400,
                "Send either 'prompt' (text) or 'messages' (a chat), not both or neither.",
                param="prompt",
                code="invalid_value",
            )
        if body.prompt is not None:
            request = GenerationRequest(request_id=request_id, prompt=body.prompt)
        else:
            request = self._chat(model, body, request_id)
        add_special = body.add_special
        if add_special is None:
            add_special = body.add_special_tokens if body.add_special_tokens is not None else True
        query = TokenizeQuery(request_id, request, add_special, body.with_pieces)
        answer = await self._pool.query(model, query)
        assert isinstance(answer, Tokenized), "a tokenize query's answer"
        return TokenizeResponse(
            tokens=answer.token_ids,
            count=len(answer.token_ids),
            max_model_len=self._pool.status(model).context_length,
            pieces=answer.pieces,
        )

    async def detokenize(self, body: DetokenizeRequest) -> PromptResponse:
        model = self._model(body.model)
        query = DetokenizeQuery(f"detok-{uuid.uuid4().hex}", tuple(body.tokens))
        answer = await self._pool.query(model, query)
        assert isinstance(answer, PromptText), "a detokenize query's answer"
        return PromptResponse(prompt=answer.text)

    async def apply_template(self, body: ApplyTemplateRequest) -> PromptResponse:
        model = self._model(body.model)
        if not body.messages:
            raise OpenAIError(
                400, "'messages' is required.", param="messages", code="invalid_value"
            )
        request_id = f"tmpl-{uuid.uuid4().hex}"
        query = RenderQuery(request_id, self._chat(model, body, request_id))
        answer = await self._pool.query(model, query)
        assert isinstance(answer, PromptText), "a render query's answer"
        return PromptResponse(prompt=answer.text)

    async def tokenizer_info(self, requested: str | None) -> TokenizerInfoResponse:
        model = self._model(requested)
        answer = await self._pool.query(model, InfoQuery(f"info-{uuid.uuid4().hex}"))
        assert isinstance(answer, TokenizerInfo), "an info query's answer"
        return TokenizerInfoResponse(
            model=model,
            bos_token=answer.bos_token,
            eos_token=answer.eos_token,
            max_model_len=answer.context_length,
        )
