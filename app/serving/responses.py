"""OpenAI Responses API -> generation requests -> Response objects and typed event streams."""

from __future__ import annotations

from app.serving.core import ServingCore
from app.store import ResponseStore


class ResponsesServing:
    """Serves /v1/responses on top of the serving core, keeping state in the response store."""

    def __init__(self, core: ServingCore, store: ResponseStore) -> None:
        self._core = core
        self._store = store
