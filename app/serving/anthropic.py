"""Anthropic Messages API -> generation requests -> Anthropic messages and event streams."""

from __future__ import annotations

from app.serving.core import ServingCore


class AnthropicServing:
    """Serves /v1/messages on top of the serving core."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core
