"""A fake engine and an in-process worker, for fast tests of the HTTP layer only.

The fake "model" answers with the words of the last user message in reverse order, one token per
word, then ends. It goes through the real `Sequence` bookkeeping, so stop strings, max_tokens and
context limits behave as in the real engines. A user message containing `FAIL_AFTER_2` makes it
fail after two tokens (to test mid-stream errors); one starting with `SAY:` makes it answer
exactly the rest of the message, three characters per token (to test tool-call parsing). When
asked for logprobs it gives each token a made-up one; asked for prompt logprobs, each prompt
word gets -1.0 (max_tokens 0: only those). Its tokenizer has one token per word (ids in order of
first sight), and its "chat template" joins the messages' words.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from collections.abc import Sequence as Texts
from dataclasses import dataclass, field

from engines.base import (
    Accepted,
    Embedded,
    Engine,
    EngineInfo,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    PromptQuery,
    Tokenized,
    TokenLogprob,
)
from engines.config import ModelConfig
from engines.errors import EngineError, InvalidRequestError, WorkerCrashedError
from engines.sequence import Sequence, completion_budget

FAIL_MARKER = "FAIL_AFTER_2"
SAY = "SAY:"
FAKE_CONTEXT_LENGTH = 64


@dataclass
class _Active:
    sequence: Sequence
    answer: list[str]
    fails: bool
    position: int = 0
    prefilled: bool = False


class FakeEngine(Engine):
    def __init__(self, config: ModelConfig) -> None:
        self.info = EngineInfo(
            engine=config.engine,
            provider="cpu",
            context_length=FAKE_CONTEXT_LENGTH,
            parallel=config.parallel,
            has_chat_template=True,
        )
        self._active: dict[str, _Active] = {}
        self._vocabulary: dict[str, int] = {}

    @staticmethod
    def prompt_words(request: GenerationRequest) -> list[str]:
        if request.prompt_ids is not None:
            return [f"t{token}" for token in request.prompt_ids]
        if request.prompt is not None:
            return request.prompt.split()
        return [word for message in request.messages for word in message.content.split()]

    def prompt_ids(self, request: GenerationRequest, *, add_special: bool = True) -> list[int]:
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        return [
            self._vocabulary.setdefault(w, len(self._vocabulary))
            for w in self.prompt_words(request)
        ]

    def detokenize(self, token_ids: Texts[int]) -> str:
        words = list(self._vocabulary)
        if any(not 0 <= token < len(words) for token in token_ids):
            raise InvalidRequestError("token id not in the fake vocabulary", param="tokens")
        return " ".join(words[token] for token in token_ids)

    def render_prompt(self, request: GenerationRequest) -> str:
        return " ".join(self.prompt_words(request))

    def special_tokens(self) -> tuple[str | None, str | None]:
        return None, "</s>"

    @staticmethod
    def _prompt_logprobs(sequence: Sequence) -> PromptLogprobs | None:
        top = sequence.request.prompt_logprobs
        if top is None:
            return None
        words = FakeEngine.prompt_words(sequence.request)
        alternatives = tuple((f"a{k}".encode(), -0.5 * (k + 1)) for k in range(top))
        entries = [TokenLogprob(f" {word}".encode(), -1.0, alternatives) for word in words[1:]]
        return PromptLogprobs(sequence.request_id, words[0].encode(), entries)

    def submit(self, request: GenerationRequest) -> Event:
        words = self.prompt_words(request)
        try:
            budget = completion_budget(request, len(words), FAKE_CONTEXT_LENGTH, None)
        except EngineError as error:
            return Failed.of(request.request_id, error)
        user = [m.content for m in request.messages if m.role == "user"] or [request.prompt or ""]
        if user[-1].startswith(SAY):
            said = user[-1][len(SAY) :]
            answer = [said[i : i + 3] for i in range(0, len(said), 3)]
        else:
            answer = [f" {w}" if i else w for i, w in enumerate(reversed(user[-1].split()))]
        sequence = Sequence(request, list(range(len(words))), budget)
        self._active[request.request_id] = _Active(sequence, answer, FAIL_MARKER in user[-1])
        return Accepted(request.request_id, len(words))

    def step(self) -> list[Event]:
        events: list[Event] = []
        for request_id, active in list(self._active.items()):
            if not active.prefilled:
                active.prefilled = True
                started = active.sequence.prefilled(self._prompt_logprobs(active.sequence))
                events.extend(started)
                if started and isinstance(started[-1], Finished):
                    del self._active[request_id]
                    continue
            if active.fails and active.position == 2:
                del self._active[request_id]
                events.append(Failed.of(request_id, EngineError("the fake engine failed")))
                continue
            done = active.position >= len(active.answer)
            piece = "" if done else active.answer[active.position]
            active.position += 1
            logprob = None
            if active.sequence.request.logprobs is not None and not done:
                top = tuple(
                    (f"t{k}".encode(), -0.5 * (k + 1))
                    for k in range(active.sequence.request.logprobs)
                )
                logprob = TokenLogprob(piece.encode(), -0.25, top)
            produced = active.sequence.accept(active.position, piece, is_end=done, logprob=logprob)
            events.extend(produced)
            if isinstance(produced[-1], Finished):
                del self._active[request_id]
        return events

    def has_work(self) -> bool:
        return bool(self._active)

    def cancel(self, request_id: str) -> None:
        self._active.pop(request_id, None)

    def embed(self, request_id: str, texts: Texts[str]) -> Embedded:
        """Made-up unit vectors of 4 dimensions; the same text gives the same vector."""
        vectors = []
        for text in texts:
            raw = [float((len(text) * (i + 1)) % 7 + 1) for i in range(4)]
            norm = sum(v * v for v in raw) ** 0.5
            vectors.append([v / norm for v in raw])
        return Embedded(request_id, vectors, sum(len(t.split()) for t in texts))

    def close(self) -> None:
        self._active.clear()


@dataclass
class InProcessWorker:
    """The pool's Worker interface around an engine stepped inside the event loop."""

    config: ModelConfig
    step_delay_s: float = 0.001
    engine: FakeEngine | None = None
    cancelled: list[str] = field(default_factory=list)
    submitted: list[GenerationRequest] = field(default_factory=list)
    _queues: dict[str, asyncio.Queue[Event]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    _driver: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def alive(self) -> bool:
        return self.engine is not None and not self._exited.is_set()

    async def start(self) -> EngineInfo:
        self.engine = FakeEngine(self.config)
        self._driver = asyncio.create_task(self._drive())
        return self.engine.info

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        assert self.engine is not None
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[request.request_id] = queue
        self.submitted.append(request)
        queue.put_nowait(self.engine.submit(request))
        self._wake.set()
        ended = False
        try:
            while not ended:
                event = await queue.get()
                ended = isinstance(event, Finished | Failed)
                yield event
        finally:
            self._queues.pop(request.request_id, None)
            if not ended:
                self.engine.cancel(request.request_id)
                self.cancelled.append(request.request_id)

    async def _drive(self) -> None:
        assert self.engine is not None
        while True:
            if not self.engine.has_work():
                self._wake.clear()
                await self._wake.wait()
            for event in self.engine.step():
                queue = self._queues.get(event.request_id)
                if queue is not None:
                    queue.put_nowait(event)
            await asyncio.sleep(self.step_delay_s)

    def crash(self) -> None:
        """Die like a killed process: in-flight requests fail, wait_exited() returns."""
        if self._driver is not None:
            self._driver.cancel()
        for request_id, queue in self._queues.items():
            queue.put_nowait(Failed.of(request_id, WorkerCrashedError("the fake worker died")))
        self._exited.set()

    async def embed(self, request_id: str, texts: tuple[str, ...]) -> Event:
        assert self.engine is not None
        try:
            return self.engine.embed(request_id, texts)
        except EngineError as error:
            return Failed.of(request_id, error)

    async def tokenize(self, request: GenerationRequest) -> Event:
        """One token per word of the prompt, as the fake engine counts them."""
        assert self.engine is not None
        words = self.engine.prompt_words(request)
        return Tokenized(request.request_id, list(range(len(words))))

    async def query(self, query: PromptQuery) -> Event:
        assert self.engine is not None
        try:
            return self.engine.answer(query)
        except EngineError as error:
            return Failed.of(query.request_id, error)

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self._driver is not None:
            self._driver.cancel()
        self._exited.set()

    async def wait_exited(self) -> int:
        await self._exited.wait()
        return 0


@dataclass
class ScriptedWorker(InProcessWorker):
    """An InProcessWorker for the pool's own tests: a made-up pid (for a faked resident memory),
    a start that waits on `gate` when one is given, and fails with `start_error` when set."""

    fake_pid: int | None = None
    gate: asyncio.Event | None = None
    start_error: EngineError | None = None
    starting: bool = False

    @property
    def pid(self) -> int | None:
        return self.fake_pid

    async def start(self) -> EngineInfo:
        self.starting = True
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.start_error is not None:
                raise self.start_error
            return await super().start()
        finally:
            self.starting = False
