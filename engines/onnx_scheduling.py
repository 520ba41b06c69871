"""How an ONNX model serves several requests: interleaved generators, or og.Engine batches.

`InterleavedGenerators` gives each request its own `og.Generator` (own KV cache) and advances
every one by a token per step: continuous (a new request starts at the next step), fair, and
every sampling option works, since the logits can be edited between forward pass and sampling.

`OgEngineBatches` hands requests to `og.Engine`, which runs them as one batch. On CUDA the
runtime batches continuously with paged attention; on CPU it batches statically (a request that
arrives mid-batch waits until the batch ends) and refuses per-request seeds. og.Engine has no
logits hook, so presence/frequency penalties and min_p are refused in this mode.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engines.base import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    JsonConstraint,
    TokenLogprob,
    unexpected_failure,
)
from engines.errors import EngineError, InvalidRequestError
from engines.json_schema import constraint_schema
from engines.logprobs import PromptScorer, token_logprob
from engines.sampling import SamplingParams
from engines.sequence import Sequence


def guidance_schema(constraint: JsonConstraint) -> str:
    """The JSON schema og's guidance enforces: the shared strict reading (engines/json_schema),
    without free whitespace: llguidance otherwise lets a small model emit newlines until
    max_tokens (seen here), where llama.cpp's JSON grammars bound it."""
    schema = constraint_schema(constraint)
    schema.setdefault("x-guidance", {"whitespace_flexible": False})
    return json.dumps(schema)


class Scheduler(Protocol):
    def check(self, request: GenerationRequest, sampling: SamplingParams) -> None:
        """Raise InvalidRequestError for what this scheduler cannot honour."""

    def add(self, sequence: Sequence, sampling: SamplingParams) -> None: ...

    def step(self) -> list[Event]: ...

    def has_work(self) -> bool: ...

    def cancel(self, request_id: str) -> None: ...

    def close(self) -> None: ...


# Prompt tokens appended per call when the prompt's logits are wanted: og returns the logits
# of every appended position, so this bounds that buffer (128 x vocab floats).
SCORING_CHUNK = 128


@dataclass
class _GeneratorSlot:
    sequence: Sequence
    generator: Any  # og.Generator
    stream: Any  # og.TokenizerStream
    sampling: SamplingParams
    counts: dict[int, int] = field(default_factory=dict)  # for presence/frequency penalties
    # Events due once the prompt is in (its log probabilities; the end of a scoring request).
    prefilled: list[Event] = field(default_factory=list)

    @property
    def edits_logits(self) -> bool:
        sampling = self.sampling
        return bool(
            sampling.presence_penalty
            or sampling.frequency_penalty
            or sampling.min_p
            or self.sequence.request.logit_bias
        )


class InterleavedGenerators:
    """One og.Generator per request, each advanced by one token per step."""

    def __init__(
        self,
        og: Any,
        model: Any,
        tokenizer: Any,
        eos_ids: set[int],
        parallel: int,
        piece: Callable[[int], bytes],
    ):
        self._og, self._model, self._tokenizer = og, model, tokenizer
        self._piece = piece  # a token's bytes, for log probabilities
        self._eos_ids = eos_ids
        self._parallel = parallel
        self._slots: dict[str, _GeneratorSlot] = {}
        self._waiting: deque[tuple[Sequence, SamplingParams]] = deque()

    def check(self, request: GenerationRequest, sampling: SamplingParams) -> None:
        return None  # everything is supported

    def add(self, sequence: Sequence, sampling: SamplingParams) -> None:
        self._waiting.append((sequence, sampling))

    def has_work(self) -> bool:
        return bool(self._waiting or self._slots)

    def cancel(self, request_id: str) -> None:
        for waiting in self._waiting:
            if waiting[0].request_id == request_id:
                self._waiting.remove(waiting)
                return
        self._slots.pop(request_id, None)

    def close(self) -> None:
        self._slots.clear()
        self._waiting.clear()

    def step(self) -> list[Event]:
        events: list[Event] = []
        while self._waiting and len(self._slots) < self._parallel:
            sequence, sampling = self._waiting.popleft()
            try:
                started = self._start(sequence, sampling)
            except Exception as error:  # og raises plain RuntimeErrors
                events.append(unexpected_failure(sequence.request_id, "starting", error))
                continue
            events.extend(started.prefilled)
            if not (started.prefilled and isinstance(started.prefilled[-1], Finished)):
                self._slots[sequence.request_id] = started
        for request_id, slot in list(self._slots.items()):
            try:
                produced = self._advance(slot)
            except Exception as error:
                produced = [unexpected_failure(request_id, "generating", error)]
            events.extend(produced)
            if isinstance(produced[-1], Finished | Failed):
                del self._slots[request_id]
        return events

    def _start(self, sequence: Sequence, sampling: SamplingParams) -> _GeneratorSlot:
        params = self._og.GeneratorParams(self._model)
        options: dict[str, Any] = {
            "max_length": len(sequence.prompt_ids) + max(1, sequence.max_new_tokens),
            "do_sample": not sampling.is_greedy,
            "repetition_penalty": sampling.repetition_penalty or 1.0,
        }
        if not sampling.is_greedy:
            options["temperature"] = sampling.temperature or 1.0
            options["top_p"] = sampling.top_p or 1.0
            options["top_k"] = sampling.top_k or 0
            seed = sampling.seed_u32()
            if seed is not None:
                options["random_seed"] = seed
        params.set_search_options(**options)
        constraint = sequence.request.constraint
        if constraint is not None:
            params.set_guidance("json_schema", guidance_schema(constraint))
        generator = self._og.Generator(self._model, params)
        prompt = np.asarray(sequence.prompt_ids, dtype=np.int32)
        scorer = PromptScorer.of(sequence, self._piece)
        if scorer is None:
            generator.append_tokens(prompt)
        else:
            # After append_tokens, og's "logits" output holds every appended position's.
            for start in range(0, len(prompt), SCORING_CHUNK):
                generator.append_tokens(prompt[start : start + SCORING_CHUNK])
                scorer.score_rows(np.asarray(generator.get_output("logits")), start)
        slot = _GeneratorSlot(sequence, generator, self._tokenizer.create_stream(), sampling)
        slot.prefilled = list(sequence.prefilled(None if scorer is None else scorer.event()))
        return slot

    def _advance(self, slot: _GeneratorSlot) -> list[Event]:
        top = slot.sequence.request.logprobs
        raw: np.ndarray | None = None
        if top is not None or slot.edits_logits:
            # A copy: generate_next_token runs the next forward pass into og's buffer.
            raw = np.array(slot.generator.get_logits(), dtype=np.float32, copy=True)
            if slot.edits_logits:
                slot.generator.set_logits(self._edited_logits(slot, raw))
        slot.generator.generate_next_token()
        token = int(slot.generator.get_next_tokens()[0])
        logprob = None
        if top is not None and raw is not None:
            logprob = self._logprob(raw, token, top)
        if token in self._eos_ids:
            return [slot.sequence.finish("stop", end_logprob=logprob)]
        slot.counts[token] = slot.counts.get(token, 0) + 1
        piece = self._detokenize(slot, token)
        return list(slot.sequence.accept(token, piece, is_end=False, logprob=logprob))

    @staticmethod
    def _detokenize(slot: _GeneratorSlot, token: int) -> str:
        text: str = slot.stream.decode(token)
        return text

    def _logprob(self, raw: Any, token: int, top: int) -> TokenLogprob:
        """From the model's raw logits (before sampling settings, bias or guidance)."""
        return token_logprob(raw, token, top, self._piece)

    @staticmethod
    def _edited_logits(slot: _GeneratorSlot, raw: np.ndarray) -> np.ndarray:
        """What og does not implement: OpenAI's presence/frequency penalties, min_p and
        logit_bias."""
        logits = raw.copy()
        flat = logits.reshape(-1)
        for token, bias in slot.sequence.request.logit_bias:
            flat[token] += bias
        sampling = slot.sampling
        if slot.counts and (sampling.presence_penalty or sampling.frequency_penalty):
            tokens = np.fromiter(slot.counts.keys(), dtype=np.int64)
            counts = np.fromiter(slot.counts.values(), dtype=np.float32)
            flat[tokens] -= (sampling.presence_penalty or 0.0) + (
                sampling.frequency_penalty or 0.0
            ) * counts
        if sampling.min_p:
            scaled = flat / max(sampling.temperature or 1.0, 1e-6)
            probabilities = np.exp(scaled - scaled.max())
            flat[probabilities < sampling.min_p * probabilities.max()] = -np.inf
        return logits


@dataclass
class _Batched:
    sequence: Sequence
    request: Any  # og.Request (kept referenced: the engine's events point at it)
    stream: Any  # og.TokenizerStream


class OgEngineBatches:
    """og.Engine runs the requests as one batch (statically on CPU, continuously on CUDA)."""

    def __init__(
        self,
        og: Any,
        model: Any,
        tokenizer: Any,
        eos_ids: set[int],
        parallel: int,
        context_length: int,
    ):
        self._og, self._tokenizer = og, tokenizer
        self._eos_ids = eos_ids
        self._context_length = context_length
        self._engine = og.Engine(model)
        batch = int(self._engine.get_capabilities().configured_max_batch_size or parallel)
        self._capacity = max(1, min(parallel, batch))
        self._buffer = self._engine.create_event_buffer(max(64, 4 * self._capacity))
        self._running: dict[int, _Batched] = {}  # id(og request) -> its request
        self._waiting: deque[tuple[Sequence, SamplingParams]] = deque()
        flags = og.EngineEventFlags
        self._token, self._finished, self._failed = (
            int(flags.TOKEN),
            int(flags.TURN_FINISHED),
            int(flags.FAILED),
        )

    def check(self, request: GenerationRequest, sampling: SamplingParams) -> None:
        unsupported = [
            name
            for name in ("presence_penalty", "frequency_penalty", "min_p")
            if getattr(sampling, name)
        ]
        if request.logit_bias:
            unsupported.append("logit_bias")
        if request.logprobs is not None:
            unsupported.append("logprobs")
        if request.prompt_logprobs is not None:
            unsupported.append("prompt logprobs (echo with logprobs)")
        if unsupported:
            raise InvalidRequestError(
                f"{', '.join(unsupported)} cannot be used with this model: it is served with "
                "batching: engine (og.Engine), which has no logits hook; serve it with "
                "batching: interleaved for them",
                param=unsupported[0],
            )

    def add(self, sequence: Sequence, sampling: SamplingParams) -> None:
        self._waiting.append((sequence, sampling))

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def cancel(self, request_id: str) -> None:
        for waiting in self._waiting:
            if waiting[0].request_id == request_id:
                self._waiting.remove(waiting)
                return
        for key, batched in list(self._running.items()):
            if batched.sequence.request_id == request_id:
                self._drop(key)
                return

    def close(self) -> None:
        for key in list(self._running):
            self._drop(key)
        self._waiting.clear()

    def step(self) -> list[Event]:
        events: list[Event] = []
        while self._waiting and len(self._running) < self._capacity:
            sequence, sampling = self._waiting.popleft()
            if sequence.scores_only:  # max_tokens 0: nothing to run
                events.extend(sequence.prefilled())
                continue
            try:
                self._start(sequence, sampling)
            except RuntimeError as error:
                events.append(self._refusal(sequence, error))
            except Exception as error:
                events.append(unexpected_failure(sequence.request_id, "starting", error))
        if not self._running:
            return events
        for event in self._engine.run(self._buffer):
            key = id(event.request)
            batched = self._running.get(key)
            if batched is None:
                continue  # cancelled meanwhile
            produced = self._translate(batched, event)
            events.extend(produced)
            if produced and isinstance(produced[-1], Finished | Failed):
                self._drop(key)
        return events

    def _translate(self, batched: _Batched, event: Any) -> list[Event]:
        flags = int(event.flags)
        sequence = batched.sequence
        if flags & self._failed:
            error = EngineError(f"og.Engine failed the request (error {event.error_code})")
            return [Failed.of(sequence.request_id, error)]
        produced: list[Event] = []
        if flags & self._token:
            token = int(event.token)
            is_end = token in self._eos_ids
            piece = "" if is_end else batched.stream.decode(token)
            produced.extend(sequence.accept(token, piece, is_end=is_end))
        if flags & self._finished and not (produced and isinstance(produced[-1], Finished)):
            ran_out = event.finish_reason == self._og.FinishReason.MAX_GENERATED_TOKENS
            produced.append(sequence.finish("length" if ran_out else "stop"))
        return produced

    def _start(self, sequence: Sequence, sampling: SamplingParams) -> None:
        options = self._og.RequestOptions()
        options.set_max_session_tokens(self._context_length)
        request = self._engine.create_request(options=options)
        turn = self._og.TurnOptions(request)
        turn.set_do_sample(not sampling.is_greedy)
        turn.set_repetition_penalty(sampling.repetition_penalty or 1.0)
        turn.set_max_generated_tokens(sequence.max_new_tokens)
        if sequence.request.constraint is not None:
            turn.set_guidance("json_schema", guidance_schema(sequence.request.constraint))
        if not sampling.is_greedy:
            turn.set_temperature(sampling.temperature or 1.0)
            turn.set_top_p(sampling.top_p or 1.0)
            turn.set_top_k(sampling.top_k or 0)
            seed = sampling.seed_u32()
            if seed is not None:
                turn.set_seed(seed)
        request.begin_turn(np.asarray(sequence.prompt_ids, dtype=np.int32), turn)
        self._running[id(request)] = _Batched(sequence, request, self._tokenizer.create_stream())

    @staticmethod
    def _refusal(sequence: Sequence, error: RuntimeError) -> Failed:
        # The runtime says what it cannot do, e.g. per-request seeds with static batching.
        refusal = InvalidRequestError(
            f"og.Engine refused the request: {error} (serve this model with batching: "
            "interleaved to use it)",
            param="seed" if "seed" in str(error) else None,
        )
        return Failed.of(sequence.request_id, refusal)

    def _drop(self, key: int) -> None:
        batched = self._running.pop(key)
        batched.request.close()
