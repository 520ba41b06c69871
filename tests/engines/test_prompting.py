"""Prompt building shared by every engine, on a stand-in tokenizer (one id per character)."""

from __future__ import annotations

import pytest

from engines.base import GenerationRequest, Message
from engines.errors import ChatTemplateMissingError, ContextLengthExceededError, EngineError
from engines.prompting import PromptBuilder
from engines.templates import ChatTemplate

TEMPLATE = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<a>"


class CharTokenizer:
    vocab_size = 0x110000
    adds_bos = True
    fim_markers: tuple[int, int, int] | None = (1, 2, 3)

    def encode(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        return ([0] if add_bos else []) + [ord(c) for c in text.encode("utf-8").decode()]


def builder(template: ChatTemplate | None = None, tokenizer: object = None) -> PromptBuilder:
    return PromptBuilder(
        "m",
        template,
        tokenizer or CharTokenizer(),  # type: ignore[arg-type]
        context_length=64,
        default_max_tokens=None,
    )


def test_a_template_that_writes_bos_gets_no_second_one() -> None:
    template = ChatTemplate(TEMPLATE, bos_token="^")
    ids = builder(template).prompt_ids(GenerationRequest("r", (Message("user", "hi"),)))
    assert ids == [ord(c) for c in "^<user>hi<a>"]
    raw = builder(template).prompt_ids(GenerationRequest("r", prompt="hi"))
    assert raw == [0, ord("h"), ord("i")]


def test_tools_without_template_support_get_the_fallback_instruction() -> None:
    tool = {"type": "function", "function": {"name": "lookup"}}
    request = GenerationRequest("r", (Message("user", "x"),), tools=(tool,))
    text = builder(ChatTemplate(TEMPLATE)).render(request)
    assert text.startswith("<system>You can call functions.")
    assert '"name": "lookup"' in text


def test_chat_without_a_template_is_refused_with_its_own_code() -> None:
    with pytest.raises(ChatTemplateMissingError) as refused:
        builder(None).sequence(GenerationRequest("r", (Message("user", "x"),)))
    assert refused.value.kind == "chat_template_missing"
    assert "chat_template" in refused.value.message
    assert builder(None).sequence(GenerationRequest("r", prompt="raw")).prompt_ids


def test_fill_in_the_middle_and_its_absence() -> None:
    ids = builder().prompt_ids(GenerationRequest("r", prompt="ab", suffix="c"))
    assert ids == [1, 0, ord("a"), ord("b"), 2, ord("c"), 3]
    no_fim = CharTokenizer()
    no_fim.fim_markers = None
    with pytest.raises(EngineError) as refused:
        builder(None, no_fim).prompt_ids(GenerationRequest("r", prompt="ab", suffix="c"))
    assert refused.value.param == "suffix"


def test_request_checks() -> None:
    with pytest.raises(ContextLengthExceededError):
        builder().sequence(GenerationRequest("r", prompt="x" * 70))
    with pytest.raises(EngineError) as refused:
        builder().sequence(GenerationRequest("r", prompt="x", logit_bias=((-1, 1.0),)))
    assert refused.value.param == "logit_bias"
    with pytest.raises(EngineError) as refused:
        builder().sequence(GenerationRequest("r", prompt="bad \ud800"))
    assert (refused.value.kind, refused.value.param) == ("invalid_request", "prompt")
