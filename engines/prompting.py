"""What every engine does with a request before its decode loop, written once.

A request becomes token ids here: the chat template renders the conversation (with the tool
definitions, or the fallback tool instruction for templates without tool support), a raw prompt
is taken as it is, a suffix asks for fill-in-the-middle. Then the request's own checks: an empty
prompt, the context budget, logit_bias token ids. An engine supplies only a `PromptTokenizer`,
its runtime's way of turning text into ids, so the same request becomes the same prompt and is
refused for the same reasons whichever engine serves the model.
"""

from __future__ import annotations

from typing import Protocol

from engines.base import GenerationRequest
from engines.errors import ChatTemplateMissingError, InvalidRequestError
from engines.sequence import Sequence, completion_budget
from engines.templates import ChatTemplate


class PromptTokenizer(Protocol):
    """The runtime-specific part of prompt building."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def adds_bos(self) -> bool:
        """Whether the model expects a BOS token before a prompt."""
        ...

    @property
    def fim_markers(self) -> tuple[int, int, int] | None:
        """The model's fill-in-the-middle tokens (prefix, suffix, middle), if it has them."""
        ...

    def encode(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """Token ids of `text`; `special`: spell-outs of special tokens become those tokens."""
        ...


def fill_in_the_middle(
    prefix: list[int], suffix: list[int], *, begin: int, before_suffix: int, middle: int
) -> list[int]:
    """Prefix-suffix-middle prompt: the model continues after the `middle` marker."""
    return [begin, *prefix, before_suffix, *suffix, middle]


class PromptBuilder:
    """Turns requests into checked token sequences for one model."""

    def __init__(
        self,
        model_name: str,
        template: ChatTemplate | None,
        tokenizer: PromptTokenizer,
        *,
        context_length: int,
        default_max_tokens: int | None,
    ) -> None:
        self.model_name = model_name
        self.template = template
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._default_max_tokens = default_max_tokens

    def render(self, request: GenerationRequest) -> str:
        """The prompt text of a chat request: the model's template over messages and tools."""
        if self.template is None:
            raise ChatTemplateMissingError(
                f"model {self.model_name!r} has no chat template, so it cannot serve chat "
                "requests; set chat_template for it in models.yaml, or send a raw prompt to "
                "/v1/completions",
                param="messages",
            )
        return self.template.render(request.messages, tools=request.tools)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        try:
            return self._prompt_ids(request)
        except UnicodeEncodeError as error:  # lone surrogates that got past the API's checks
            raise InvalidRequestError(
                f"the prompt is not valid Unicode text: {error.reason}",
                param="prompt" if request.prompt is not None else "messages",
            ) from error

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        tokenizer = self.tokenizer
        if request.suffix is not None:
            return self._fill_in_the_middle(request.prompt or "", request.suffix)
        text = request.prompt if request.prompt is not None else self.render(request)
        bos = self.template.bos_token if self.template is not None else ""
        # A template that writes BOS itself must not get a second one.
        add_bos = tokenizer.adds_bos and not (bos and text.startswith(bos))
        return tokenizer.encode(text, add_bos=add_bos, special=True)

    def _fill_in_the_middle(self, prefix: str, suffix: str) -> list[int]:
        markers = self.tokenizer.fim_markers
        if markers is None:
            raise InvalidRequestError(
                f"model {self.model_name!r} has no fill-in-the-middle tokens, so it cannot "
                "complete text before a suffix",
                param="suffix",
            )
        begin, before_suffix, middle = markers
        encode = self.tokenizer.encode
        return fill_in_the_middle(
            encode(prefix, add_bos=self.tokenizer.adds_bos, special=False),
            encode(suffix, add_bos=False, special=False),
            begin=begin,
            before_suffix=before_suffix,
            middle=middle,
        )

    def sequence(self, request: GenerationRequest) -> Sequence:
        """The request as a sequence ready to run, or the EngineError that refuses it."""
        prompt_ids = self.prompt_ids(request)
        if not prompt_ids:
            raise InvalidRequestError(
                "the prompt is empty", param="prompt" if request.prompt is not None else "messages"
            )
        budget = completion_budget(
            request, len(prompt_ids), self.context_length, self._default_max_tokens
        )
        self._check_logit_bias(request)
        return Sequence(request, prompt_ids, budget)

    def _check_logit_bias(self, request: GenerationRequest) -> None:
        size = self.tokenizer.vocab_size
        for token, _ in request.logit_bias:
            if not 0 <= token < size:
                raise InvalidRequestError(
                    f"logit_bias names token {token}; this model's tokens are 0 to {size - 1}",
                    param="logit_bias",
                )
