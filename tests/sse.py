"""Strict parsing of a Server-Sent Events body as OpenAI sends it."""

from __future__ import annotations

import json
from typing import Any


def sse_payloads(body: str) -> list[str]:
    """The `data:` payloads, asserting OpenAI's framing: one `data: ` line per event, blank-line
    separated, comment lines (keep-alive pings) allowed, `[DONE]` last."""
    assert body.endswith("\n\n"), f"an SSE body ends with a blank line: {body[-40:]!r}"
    payloads = []
    for event in body.split("\n\n")[:-1]:
        lines = [line for line in event.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 1, f"one data line per event: {event!r}"
        assert lines[0].startswith("data: "), f"not a data line: {lines[0]!r}"
        payloads.append(lines[0][len("data: ") :])
    assert payloads, "no events"
    assert payloads[-1] == "[DONE]", f"the stream must end with [DONE], got {payloads[-1]!r}"
    assert payloads.count("[DONE]") == 1
    return payloads


def sse_chunks(body: str) -> list[dict[str, Any]]:
    """The JSON chunks of a stream (everything before `[DONE]`)."""
    return [json.loads(payload) for payload in sse_payloads(body)[:-1]]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )
