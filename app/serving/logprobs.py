"""Token log probabilities in OpenAI's two formats (chat and text completions)."""

from __future__ import annotations

from app.protocol import CompletionLogprobs, TokenLogprobOut, TopLogprob
from engines.base import TokenLogprob


def _text(token: bytes) -> str:
    # A token may hold part of a UTF-8 character; its exact bytes travel alongside.
    return token.decode("utf-8", "replace")


def chat_logprob(entry: TokenLogprob) -> TokenLogprobOut:
    return TokenLogprobOut(
        token=_text(entry.token),
        logprob=entry.logprob,
        bytes=list(entry.token),
        top_logprobs=[
            TopLogprob(token=_text(token), logprob=logprob, bytes=list(token))
            for token, logprob in entry.top
        ],
    )


def completion_logprobs(entries: list[TokenLogprob], start_offset: int) -> CompletionLogprobs:
    """`text_offset`: where each token starts in the returned text (after `start_offset`)."""
    tokens = [_text(entry.token) for entry in entries]
    offsets = []
    position = start_offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[{_text(token): lp for token, lp in entry.top} for entry in entries],
        text_offset=offsets,
    )
