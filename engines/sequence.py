"""Per-request bookkeeping shared by every engine.

An engine samples token ids; this module turns them into what a client may see: text released
only as complete UTF-8 and never as part of a stop string, the token budget, finish reasons,
counts and timings. Keeping it here means both runtimes stop, count and time the same way.
"""

from __future__ import annotations

import codecs
import time

from engines.base import (
    Finished,
    FinishReason,
    GenerationRequest,
    PromptLogprobs,
    TokenEvent,
    TokenLogprob,
)
from engines.errors import ContextLengthExceededError


class TextReleaser:
    """Releases generated text once it is complete UTF-8 and cannot start a stop string."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._held = ""
        self.stopped = False
        # The stop string that ended the text (the first one in it, the shortest on a tie).
        self.matched: str | None = None

    def push(self, piece: bytes | str) -> str:
        """Add a token's bytes (or text) and return the text that is now safe to send."""
        decoded = self._decoder.decode(piece) if isinstance(piece, bytes) else piece
        text = self._held + decoded
        if not self._stop:
            self._held = ""
            return text
        found = [(i, len(s), s) for s in self._stop if (i := text.find(s)) >= 0]
        cut = min(found)[0] if found else -1
        if cut >= 0:
            self.stopped = True
            self.matched = min(found)[2]
            self._held = ""
            return text[:cut]
        keep = self._partial_stop_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Everything still held: the generation ended without completing a stop string."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that some stop string starts with."""
        for length in range(min(len(text), self._longest_stop - 1), 0, -1):
            tail = text[-length:]
            if any(s.startswith(tail) for s in self._stop):
                return length
        return 0


def completion_budget(
    request: GenerationRequest,
    prompt_tokens: int,
    context_length: int,
    default_max_tokens: int | None,
) -> int:
    """How many tokens the request may generate, or ContextLengthExceededError.

    An explicit max_tokens must fit beside the prompt (OpenAI's behaviour); a model default is
    only an upper bound and is clamped to what the context leaves. max_tokens 0 only scores the
    prompt, which may then fill the whole context.
    """
    room = context_length - prompt_tokens
    if request.max_tokens == 0 and room >= 0:
        return 0
    if request.max_tokens is not None and request.max_tokens > room:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {prompt_tokens + request.max_tokens} tokens ({prompt_tokens} in the "
            f"messages, {request.max_tokens} in the completion). Please reduce the length of "
            "the messages or completion.",
            param="messages",
        )
    if room <= 0:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context_length} tokens. However, your "
            f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the "
            "messages.",
            param="messages",
        )
    if request.max_tokens is not None:
        return request.max_tokens
    bounds = [room, default_max_tokens, request.max_tokens_ceiling]
    return min(bound for bound in bounds if bound)


class Sequence:
    """One request inside an engine: its prompt, budget, released text, counts and timings."""

    def __init__(
        self, request: GenerationRequest, prompt_ids: list[int], max_new_tokens: int
    ) -> None:
        self.request = request
        self.request_id = request.request_id
        self.prompt_ids = prompt_ids
        self.max_new_tokens = max_new_tokens
        self.completion_tokens = 0
        self.cached_prompt_tokens = 0
        # The first prompt token is a BOS the tokenizer added (no part of the prompt's text).
        self.bos_added = False
        self.text = TextReleaser(request.stop)
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None

    def accept(
        self,
        token_id: int,
        piece: bytes | str,
        *,
        is_end: bool,
        logprob: TokenLogprob | None = None,
    ) -> list[TokenEvent | Finished]:
        """Account one sampled token; the last event is `Finished` when the request is done."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if is_end:
            return [self.finish("stop", end_logprob=logprob)]
        self.completion_tokens += 1
        events: list[TokenEvent | Finished] = [
            TokenEvent(self.request_id, token_id, self.text.push(piece), logprob)
        ]
        if self.text.stopped:
            events.append(self.finish("stop"))
        elif self.completion_tokens >= self.max_new_tokens:
            events.append(self.finish("length"))
        return events

    def prefilled(self, prompt: PromptLogprobs | None = None) -> list[PromptLogprobs | Finished]:
        """Events once the whole prompt is in: its log probabilities when asked for, then the end
        when the request only scores its prompt (max_tokens 0). Nothing else: sample next."""
        events: list[PromptLogprobs | Finished] = [] if prompt is None else [prompt]
        if self.scores_only:
            self.first_token_at = time.perf_counter()
            events.append(self.finish("length"))
        return events

    @property
    def scores_only(self) -> bool:
        """max_tokens 0: the prompt is evaluated (for its log probabilities), nothing sampled."""
        return self.max_new_tokens == 0

    def finish(self, reason: FinishReason, *, end_logprob: TokenLogprob | None = None) -> Finished:
        now = time.perf_counter()
        first = self.first_token_at if self.first_token_at is not None else now
        return Finished(
            request_id=self.request_id,
            finish_reason=reason,
            text=self.text.flush(),
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.completion_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
            stop_sequence=self.text.matched if reason == "stop" else None,
            time_to_first_token_s=first - self.submitted_at,
            generation_s=now - first,
            end_logprob=end_logprob,
        )
