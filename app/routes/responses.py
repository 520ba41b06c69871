"""/v1/responses: OpenAI's Responses API (create, retrieve, delete, input items)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
