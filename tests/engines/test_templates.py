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


TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
HERMES_LIKE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}[{{ m.role }}]"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function.name }}"
    "({{ c.function.arguments.city }})</tool_call>{% endfor %}"
    "{% elif m.role == 'tool' %}<tool_response id={{ m.tool_call_id }}>{{ m.content }}"
    "</tool_response>{% else %}{{ m.content }}{% endif %}{% endfor %}"
)


def conversation() -> list[Message]:
    return [
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=(CALL,)),
        Message("tool", "18C", tool_call_id="call_1"),
    ]


def test_a_template_with_tool_support_gets_tools_and_tool_turns() -> None:
    template = ChatTemplate(HERMES_LIKE)
    assert template.handles_tools
    text = template.render(conversation(), tools=[TOOL], add_generation_prompt=False)
    assert text == (
        "<tools>get_weather;</tools>[user]Weather?[assistant]<tool_call>get_weather(Paris)"
        "</tool_call>[tool]<tool_response id=call_1>18C</tool_response>"
    )


def test_a_template_without_tools_gets_the_documented_fallback() -> None:
    template = ChatTemplate(CHATML)
    assert not template.handles_tools
    text = template.render(conversation(), tools=[TOOL], add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\nYou can call functions.")
    assert '{"name": "get_weather", "parameters": {"type": "object"}}' in text
    assert '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert "<|im_start|>user\nResult of get_weather (call call_1):\n18C" in text
    # Without tools nothing is added.
    assert ChatTemplate(CHATML).render([Message("user", "hi")]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
