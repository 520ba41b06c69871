"""Chat templates render like Hugging Face's, inside a sandbox."""

from __future__ import annotations

import pytest

from engines.base import Message
from engines.errors import InvalidRequestError, ModelLoadError
from engines.templates import ChatTemplate

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_chatml_renders_with_generation_prompt() -> None:
    template = ChatTemplate(CHATML)
    text = template.render([Message("system", "S"), Message("user", "U")])
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )


def test_special_tokens_and_helpers_are_available() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{{ m | tojson }}{% endfor %}{{ eos_token }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert template.render([Message("user", "é")], add_generation_prompt=False) == (
        '<s>{"role": "user", "content": "é"}</s>'
    )


def test_template_can_reject_messages() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    with pytest.raises(InvalidRequestError, match="user first"):
        template.render([Message("assistant", "x")])


def test_sandbox_blocks_python_internals() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidRequestError):
        template.render([Message("user", "x")])


def test_broken_template_fails_at_load() -> None:
    with pytest.raises(ModelLoadError):
        ChatTemplate("{% for %}")
