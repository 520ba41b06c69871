"""Token log probabilities in OpenAI's two formats (chat and text completions)."""

from __future__ import annotations

import codecs

from app.protocol import CompletionLogprobs, TokenLogprobOut, TopLogprob
from engines.base import PromptLogprobs, TokenLogprob


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


def _offsets(pieces: list[bytes], start: int) -> list[int]:
    """Where each token starts in the text, in characters from `start`: a token that begins
    inside a character (its bytes split over tokens) starts where that character does."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets = []
    position = start
    for piece in pieces:
        offsets.append(position)
        position += len(decoder.decode(piece))
    return offsets


def completion_logprobs(
    entries: list[TokenLogprob], start_offset: int, prompt: PromptLogprobs | None = None
) -> CompletionLogprobs:
    """OpenAI's legacy format: the prompt's tokens first when given (echo; the first has no
    log probability), at offsets from 0, then `entries`, whose offsets in the returned text
    start at `start_offset`."""
    tokens: list[str] = []
    logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    if prompt is not None:
        pieces = [prompt.first_token, *(entry.token for entry in prompt.entries)]
        tokens += [_text(piece) for piece in pieces]
        logprobs += [None, *(entry.logprob for entry in prompt.entries)]
        tops += [None, *(_top(entry) for entry in prompt.entries)]
        offsets += _offsets(pieces, 0)
    tokens += [_text(entry.token) for entry in entries]
    logprobs += [entry.logprob for entry in entries]
    tops += [_top(entry) for entry in entries]
    offsets += _offsets([entry.token for entry in entries], start_offset)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=logprobs, top_logprobs=tops, text_offset=offsets
    )


def _top(entry: TokenLogprob) -> dict[str, float]:
    return {_text(token): logprob for token, logprob in entry.top}
