"""Chat templates: the model's own Jinja template, rendered in a sandbox.

Both engines render through this module (GGUF metadata `tokenizer.chat_template`, or the ONNX
folder's chat_template.jinja / tokenizer_config.json), so a conversation becomes the same prompt
text whichever runtime serves the model. The environment mirrors what Hugging Face templates
expect (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `tojson`, `strftime_now`)
inside Jinja's immutable sandbox: a template from a downloaded model cannot reach Python.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engines.base import Message
from engines.errors import InvalidRequestError, ModelLoadError
from engines.tools import template_message, with_tool_fallback


class TemplateRaisedError(InvalidRequestError):
    """The template itself rejected the conversation (for example roles out of order)."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRaisedError(f"the model's chat template rejected the messages: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template plus the special token strings it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
            undefined=jinja2.Undefined,
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelLoadError(f"the chat template does not compile: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Templates that render tool definitions and tool turns themselves mention `tools`.
        self.handles_tools = "tools" in source

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] = (),
    ) -> str:
        """The prompt text for a conversation, ending where the assistant's answer begins."""
        if not self.handles_tools:
            messages = with_tool_fallback(messages, tools)
            tools = ()
        payload = [template_message(message) for message in messages]
        try:
            return self._template.render(
                messages=payload,
                tools=list(tools) or None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except InvalidRequestError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError) as exc:
            raise InvalidRequestError(
                f"the model's chat template failed on these messages: {exc}", param="messages"
            ) from exc
