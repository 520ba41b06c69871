"""The engine interface and the small values the pool and workers exchange.

The OpenAI protocol stops in `app/`; below it a request is a `GenerationRequest` and its answer a
stream of events: `Accepted` (prompt tokenized, fits the context), `TokenEvent` per sampled token,
then exactly one of `Finished` or `Failed`.

Engines are step-driven so that one worker loop serves one or many concurrent requests the same
way: `submit` queues a request, each `step` advances every active request by at most one token
(and some prompt prefill), `cancel` drops a request before the next step.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engines.errors import EngineError, InternalEngineError, InvalidRequestError
from engines.sampling import SamplingParams

log = logging.getLogger("slmserve.engines")

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message with its content already flattened to text."""

    role: str
    content: str
    name: str | None = None
    # An assistant turn that called tools: OpenAI's tool_calls objects, as sent.
    tool_calls: tuple[dict[str, Any], ...] = ()
    # A tool result: the call it answers.
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class JsonConstraint:
    """Generate one JSON document: any object (no schema), or one valid against `schema`."""

    schema: str | None = None
    # The request field the schema came from, named when it cannot be used.
    param: str = "response_format"


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything an engine needs to generate one completion."""

    request_id: str
    messages: tuple[Message, ...] = ()
    # A raw prompt bypasses the chat template (text completions).
    prompt: str | None = None
    # A prompt given as token ids (text completions): taken exactly as sent.
    prompt_ids: tuple[int, ...] | None = None
    # None: generate until the end of the context window (or max_tokens_ceiling).
    max_tokens: int | None = None
    # A server-wide bound on what a request may generate when it names no max_tokens.
    max_tokens_ceiling: int | None = None
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # None: no log probabilities; k: the sampled token's and the k most likely alternatives'.
    logprobs: int | None = None
    # None: none; k: log p of every prompt token after the first (a `PromptLogprobs` event),
    # with the k most likely alternatives at each position. Prompt positions get logits only
    # when asked for: such a request reuses no cached prefix.
    prompt_logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    constraint: JsonConstraint | None = None
    # OpenAI tool definitions, for chat templates that render tools themselves.
    tools: tuple[dict[str, Any], ...] = ()
    # Fill-in-the-middle: text that follows the completion (raw prompts only).
    suffix: str | None = None


@dataclass(slots=True)
class Accepted:
    """The prompt was tokenized and fits; generation will follow."""

    request_id: str
    prompt_tokens: int


@dataclass(slots=True)
class TokenLogprob:
    """Log probability of a sampled token under the model, and the most likely tokens there."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(slots=True)
class PromptLogprobs:
    """Log probabilities of the prompt's tokens, sent once the prompt is in and before any
    generated token. The first token has no context: `first_token` names it; `entries` holds
    the others' (log p of token i given tokens before it), in order."""

    request_id: str
    first_token: bytes
    entries: list[TokenLogprob]


@dataclass(slots=True)
class TokenEvent:
    """One sampled token and the text it releases (may be empty: partial UTF-8 or stop string)."""

    request_id: str
    token_id: int
    text: str
    logprob: TokenLogprob | None = None


@dataclass(slots=True)
class Finished:
    """The request ended normally. Token counts are the engine's own."""

    request_id: str
    finish_reason: FinishReason
    text: str  # text released at the end (held-back stop prefix or UTF-8 tail); may be empty
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    # The stop string that ended generation (finish_reason "stop"); None: the model's end token.
    stop_sequence: str | None = None
    # Seconds measured inside the worker, where tokens are produced.
    time_to_first_token_s: float = 0.0
    generation_s: float = 0.0
    # The end-of-text token's log probability when the model ended the text and the request
    # asked for logprobs (text completions list it, as OpenAI did; harnesses count on it).
    end_logprob: TokenLogprob | None = None


@dataclass(slots=True)
class Failed:
    """The request ended with an error; `kind` names an `EngineError` class."""

    request_id: str
    kind: str
    message: str
    param: str | None = None

    @classmethod
    def of(cls, request_id: str, error: EngineError) -> Failed:
        kind, message, param = error.to_wire()
        return cls(request_id, kind, message, param)

    def to_error(self) -> EngineError:
        return EngineError.from_wire(self.kind, self.message, self.param)


@dataclass(slots=True)
class Embedded:
    """Embeddings of an embedding request's inputs, in order, L2-normalised."""

    request_id: str
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(slots=True)
class Tokenized:
    """The token ids a request's prompt becomes (counting tokens, /tokenize)."""

    request_id: str
    token_ids: list[int]
    # Each token's text, when asked for (a token holding part of a UTF-8 character shows
    # U+FFFD).
    pieces: list[str] | None = None


@dataclass(slots=True)
class PromptText:
    """Text a prompt query answers with: token ids decoded, or a chat rendered by its template."""

    request_id: str
    text: str


@dataclass(slots=True)
class TokenizerInfo:
    """The model's special tokens as text (None: it has none), for clients that tokenize through
    the server (lm-evaluation-harness's remote tokenizer)."""

    request_id: str
    bos_token: str | None
    eos_token: str | None
    context_length: int


Event = (
    Accepted
    | PromptLogprobs
    | TokenEvent
    | Finished
    | Failed
    | Embedded
    | Tokenized
    | PromptText
    | TokenizerInfo
)


# Questions about prompts that the model's tokenizer and chat template answer without
# generating (the /tokenize, /detokenize and /apply-template endpoints). A worker answers
# between two engine steps.
@dataclass(frozen=True, slots=True)
class TokenizeQuery:
    """The token ids of a request's prompt (raw text, or messages through the template)."""

    request_id: str
    request: GenerationRequest
    # Raw prompts: whether the model's BOS is added as for generation (chat: the template's).
    add_special: bool = True
    with_pieces: bool = False


@dataclass(frozen=True, slots=True)
class DetokenizeQuery:
    """The text of token ids, special tokens spelled out."""

    request_id: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RenderQuery:
    """The prompt text a chat request becomes: its messages and tools through the template."""

    request_id: str
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class InfoQuery:
    """The model's special tokens (answered by `TokenizerInfo`)."""

    request_id: str


PromptQuery = TokenizeQuery | DetokenizeQuery | RenderQuery | InfoQuery


def unexpected_failure(request_id: str, during: str, error: BaseException) -> Failed:
    """An exception nobody expected while serving one request: logged with its traceback and
    the request id, and answered as a 500 for that request alone."""
    if isinstance(error, EngineError):
        return Failed.of(request_id, error)
    log.error("request %s failed while %s", request_id, during, exc_info=error)
    return Failed.of(
        request_id,
        InternalEngineError(
            f"the model failed while {during} this request ({type(error).__name__}); the "
            f"server log has the details under request id {request_id}"
        ),
    )


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """Facts about a loaded engine that the pool and /v1/models report."""

    engine: str
    provider: str
    context_length: int
    parallel: int
    has_chat_template: bool
    load_seconds: float = 0.0


class Engine(abc.ABC):
    """A loaded model that generates for one or many requests, driven step by step."""

    info: EngineInfo

    @abc.abstractmethod
    def submit(self, request: GenerationRequest) -> Event:
        """Tokenize and queue a request; returns `Accepted`, or `Failed` when it cannot run."""

    @abc.abstractmethod
    def step(self) -> list[Event]:
        """Advance every active request by at most one token; returns the events produced."""

    @abc.abstractmethod
    def has_work(self) -> bool:
        """Whether `step` has anything to do."""

    @abc.abstractmethod
    def cancel(self, request_id: str) -> None:
        """Forget a request; its slot is free before the next step. Unknown ids are ignored."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model's memory."""

    def prompt_ids(self, request: GenerationRequest, *, add_special: bool = True) -> list[int]:
        """The token ids `request`'s prompt becomes, exactly as generation would see them
        (`add_special` False: a raw prompt without the BOS the model would add)."""
        raise InvalidRequestError(f"{self.info.engine} models cannot tokenize", param="model")

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of `token_ids`, special tokens spelled out; ids outside the vocabulary are
        refused."""
        raise InvalidRequestError(f"{self.info.engine} models cannot detokenize", param="model")

    def render_prompt(self, request: GenerationRequest) -> str:
        """The text a chat request's messages and tools become through the chat template."""
        raise InvalidRequestError(
            f"{self.info.engine} models cannot render chat templates", param="model"
        )

    def special_tokens(self) -> tuple[str | None, str | None]:
        """The texts of the model's BOS and EOS tokens (None where it has none)."""
        return None, None

    def answer(self, query: PromptQuery) -> Tokenized | PromptText | TokenizerInfo:
        """Answer a prompt query (a worker calls it between two steps)."""
        if isinstance(query, InfoQuery):
            bos, eos = self.special_tokens()
            return TokenizerInfo(query.request_id, bos, eos, self.info.context_length)
        if isinstance(query, TokenizeQuery):
            ids = self.prompt_ids(query.request, add_special=query.add_special)
            pieces = [self.detokenize([token]) for token in ids] if query.with_pieces else None
            return Tokenized(query.request_id, ids, pieces)
        if isinstance(query, DetokenizeQuery):
            return PromptText(query.request_id, self.detokenize(query.token_ids))
        return PromptText(query.request_id, self.render_prompt(query.request))

    def embed_text(self, text: str, index: int) -> tuple[list[float], int]:
        """The mean-pooled, L2-normalised embedding of input `index` and its token count;
        engines that cannot, refuse."""
        raise InvalidRequestError(
            f"{self.info.engine} models cannot produce embeddings", param="model"
        )

    def embed(self, request_id: str, texts: Sequence[str]) -> Embedded:
        """Embeddings of all `texts` at once (the worker interleaves them with decoding)."""
        vectors, total = [], 0
        for index, text in enumerate(texts):
            vector, tokens = self.embed_text(text, index)
            vectors.append(vector)
            total += tokens
        return Embedded(request_id, vectors, total)

    def generate(self, request: GenerationRequest) -> Iterator[Event]:
        """Run one request to the end in the calling thread (warmup, benchmarks, tests)."""
        first = self.submit(request)
        yield first
        if isinstance(first, Failed):
            return
        while self.has_work():
            for event in self.step():
                if event.request_id != request.request_id:
                    continue
                yield event
                if isinstance(event, Finished | Failed):
                    return

    def warmup(self) -> float:
        """A short generation so the first request pays no first-call costs; returns seconds."""
        started = time.perf_counter()
        # A model without a chat template (a base model) still serves raw prompts: warm that.
        chat = self.info.has_chat_template
        request = GenerationRequest(
            request_id="warmup",
            messages=(Message(role="user", content="Hello"),) if chat else (),
            prompt=None if chat else "Hello",
            max_tokens=4,
            sampling=SamplingParams(temperature=0.0),
        )
        for event in self.generate(request):
            if isinstance(event, Failed):
                raise event.to_error()
        return time.perf_counter() - started
