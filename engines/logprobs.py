"""Log probabilities from logits: a sampled token's, a prompt's tokens', the most likely ones'.

Both engines read raw logits (before sampling settings, bias or grammar) and score with this
code, so the same model gives the same numbers whichever engine serves it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engines.base import PromptLogprobs, TokenLogprob
from engines.sequence import Sequence


def log_softmax_at(
    logits: np.ndarray, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the model, and the `top` most likely (token, log p), best first."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    peak = values.max()
    normaliser = peak + np.log(np.exp(values - peak).sum())
    best: list[tuple[int, float]] = []
    if top > 0:
        candidates = np.argpartition(-values, min(top, values.size - 1))[:top]
        ordered = candidates[np.argsort(-values[candidates])]
        best = [(int(index), float(values[index] - normaliser)) for index in ordered]
    return float(values[token] - normaliser), best


def token_logprob(
    logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """`token`'s log probability under `logits` and the `top` alternatives, named by `piece`."""
    value, best = log_softmax_at(logits, token, top)
    return TokenLogprob(piece(token), value, tuple((piece(t), lp) for t, lp in best))


class PromptScorer:
    """Collects a prompt's log probabilities as its positions' logits come (in order, in one or
    many prefill chunks): the logits at position i score token i + 1. Shared by the engines."""

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        top: int,
        piece: Callable[[int], bytes],
        *,
        first_piece: bytes | None = None,
    ) -> None:
        self._request_id = request_id
        self._prompt_ids = prompt_ids
        self._top = top
        self._piece = piece
        # An added BOS is no part of the prompt's text: it shows as "" (offsets stay right).
        self._first = piece(prompt_ids[0]) if first_piece is None else first_piece
        self._entries: list[TokenLogprob] = []

    @classmethod
    def of(cls, sequence: Sequence, piece: Callable[[int], bytes]) -> PromptScorer | None:
        """The scorer of a sequence that asks for its prompt's log probabilities, else None."""
        top = sequence.request.prompt_logprobs
        if top is None:
            return None
        first = b"" if sequence.bos_added else None
        return cls(sequence.request_id, sequence.prompt_ids, top, piece, first_piece=first)

    @property
    def next_position(self) -> int:
        """The prompt position whose logits come next."""
        return len(self._entries)

    def score(self, position: int, logits: np.ndarray) -> None:
        """The logits computed at prompt `position`; the last position's score nothing (they
        give the first generated token)."""
        if position != len(self._entries):
            raise ValueError(f"prompt position {position} scored out of order")
        following = position + 1
        if following < len(self._prompt_ids):
            token = self._prompt_ids[following]
            self._entries.append(token_logprob(logits, token, self._top, self._piece))

    def score_rows(self, rows: np.ndarray, start: int = 0) -> None:
        """Consecutive positions' logits from `start`, one row each."""
        for offset, row in enumerate(rows.reshape(-1, rows.shape[-1])):
            self.score(start + offset, row)

    @property
    def complete(self) -> bool:
        return len(self._entries) == len(self._prompt_ids) - 1

    def event(self) -> PromptLogprobs:
        if not self.complete:
            raise ValueError("the prompt is not fully scored yet")
        return PromptLogprobs(self._request_id, self._first, self._entries)
