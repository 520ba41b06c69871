"""What every engine does with a request before its decode loop, written once.

A request becomes token ids here: the chat template renders the conversation (with the tool
definitions, or the fallback tool instruction for templates without tool support), a raw prompt
is taken as it is (as text, or as token ids checked against the vocabulary), a suffix asks for
fill-in-the-middle. Then the request's own checks: an empty
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

    def decode(self, ids: list[int]) -> str:
        """The text of valid token ids, special tokens spelled out (encode's inverse)."""
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

    def prompt_ids(self, request: GenerationRequest, *, add_special: bool = True) -> list[int]:
        """The request's prompt as token ids; `add_special` False: no BOS before a raw prompt."""
        if request.prompt_ids is not None:
            self.check_ids(request.prompt_ids, "prompt")
            return list(request.prompt_ids)
        try:
            return self._prompt_ids(request, add_special)
        except UnicodeEncodeError as error:  # lone surrogates that got past the API's checks
            raise InvalidRequestError(
                f"the prompt is not valid Unicode text: {error.reason}",
                param="prompt" if request.prompt is not None else "messages",
            ) from error

    def adds_bos(self, request: GenerationRequest) -> bool:
        """Whether the prompt's first token is a BOS the tokenizer added, not the prompt's text."""
        if request.prompt_ids is not None or request.suffix is not None:
            return False
        text = request.prompt if request.prompt is not None else self.render(request)
        return self._adds_bos_to(text)

    def _adds_bos_to(self, text: str) -> bool:
        bos = self.template.bos_token if self.template is not None else ""
        # A template that writes BOS itself must not get a second one.
        return self.tokenizer.adds_bos and not (bos and text.startswith(bos))

    def _prompt_ids(self, request: GenerationRequest, add_special: bool) -> list[int]:
        if request.suffix is not None:
            return self._fill_in_the_middle(request.prompt or "", request.suffix)
        text = request.prompt if request.prompt is not None else self.render(request)
        add_bos = self._adds_bos_to(text) and (add_special or request.prompt is None)
        return self.tokenizer.encode(text, add_bos=add_bos, special=True)

    def check_ids(self, ids: tuple[int, ...] | list[int], param: str) -> None:
        """Token ids from a client must name tokens of this model (llama.cpp aborts on others)."""
        size = self.tokenizer.vocab_size
        for token in ids:
            if not 0 <= token < size:
                raise InvalidRequestError(
                    f"token id {token} is not in this model's vocabulary (0 to {size - 1})",
                    param=param,
                )

    def decode(self, ids: tuple[int, ...] | list[int]) -> str:
        """The text of token ids sent by a client (/detokenize), checked first."""
        self.check_ids(ids, "tokens")
        return self.tokenizer.decode(list(ids))

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
                "the prompt is empty",
                param="messages" if request.messages and request.prompt is None else "prompt",
            )
        budget = completion_budget(
            request, len(prompt_ids), self.context_length, self._default_max_tokens
        )
        self._check_logit_bias(request)
        sequence = Sequence(request, prompt_ids, budget)
        if request.prompt_logprobs is not None:
            sequence.bos_added = self.adds_bos(request)
        return sequence

    def _check_logit_bias(self, request: GenerationRequest) -> None:
        size = self.tokenizer.vocab_size
        for token, _ in request.logit_bias:
            if not 0 <= token < size:
                raise InvalidRequestError(
                    f"logit_bias names token {token}; this model's tokens are 0 to {size - 1}",
                    param="logit_bias",
                )
