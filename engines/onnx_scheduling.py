"""How an ONNX model serves several requests: interleaved generators, or og.Engine batches.

`InterleavedGenerators` gives each request its own `og.Generator` (own KV cache) and advances
every one by a token per step: continuous (a new request starts at the next step), fair, and
every sampling option works, since the logits can be edited between forward pass and sampling.
A finished request's generator is parked (engines/onnx_prefix_cache.py): a request continuing
its conversation takes it, rewinds it to the shared prefix and prefills only the new tokens.

`OgEngineBatches` hands requests to `og.Engine`, which runs them as one batch. On CUDA the
runtime batches continuously with paged attention; on CPU it batches statically (a request that
arrives mid-batch waits until the batch ends) and refuses per-request seeds. og.Engine has no
logits hook, so presence/frequency penalties and min_p are refused in this mode.
"""

from __future__ import annotations

import json
import logging
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
from engines.onnx_prefix_cache import (
    IdleGenerator,
    IdleGenerators,
    SearchOptions,
    max_length_with_room,
    search_options_key,
)
from engines.sampling import SamplingParams
from engines.sequence import Sequence

log = logging.getLogger("slmserve.engines.onnx")


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


# Prompt tokens a reused generator evaluates again, at least (see _start).
REEVALUATED_TOKENS = 2
# Prompt tokens appended per call when the prompt's logits are wanted: og returns the logits
# of every appended position, so this bounds that buffer (128 x vocab floats).
SCORING_CHUNK = 128


@dataclass
class _GeneratorSlot:
    sequence: Sequence
    generator: Any  # og.Generator
    stream: Any  # og.TokenizerStream
    sampling: SamplingParams
    max_length: int  # KV positions the generator holds
    options: SearchOptions
    parkable: bool  # whether another request may reuse the generator once this one ends
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
        context_length: int,
        min_length: int = 0,
    ):
        self._og, self._model, self._tokenizer = og, model, tokenizer
        self._piece = piece  # a token's bytes, for log probabilities
        self._eos_ids = eos_ids
        self._parallel = parallel
        self._context_length = context_length
        # KV positions every generator needs: a sliding-window model's window (og refuses a
        # cache smaller than the window, whatever the request's length).
        self._min_length = min_length
        self._slots: dict[str, _GeneratorSlot] = {}
        self._waiting: deque[tuple[Sequence, SamplingParams]] = deque()
        # Running and parked generators together hold at most the KV of `parallel` full
        # contexts: the bound a GGUF model's slots have.
        self.idle = IdleGenerators(max_count=parallel, max_positions=parallel * context_length)

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
        slot = self._slots.pop(request_id, None)
        if slot is not None:  # between two steps: its cache is consistent
            self._park(slot)

    def close(self) -> None:
        self._slots.clear()
        self._waiting.clear()
        self.idle.clear()

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
            if started.prefilled and isinstance(started.prefilled[-1], Finished):
                self._park(started)
            else:
                self._slots[sequence.request_id] = started
        for request_id, slot in list(self._slots.items()):
            try:
                produced = self._advance(slot)
            except Exception as error:  # the generator is in an unknown state: dropped
                produced = [unexpected_failure(request_id, "generating", error)]
            events.extend(produced)
            if isinstance(produced[-1], Finished | Failed):
                del self._slots[request_id]
                if isinstance(produced[-1], Finished):
                    self._park(slot)
        return events

    def _start(self, sequence: Sequence, sampling: SamplingParams) -> _GeneratorSlot:
        options = self._search_options(sampling)
        key = search_options_key(options)
        prompt = np.asarray(sequence.prompt_ids, dtype=np.int32)
        needed = len(prompt) + max(1, sequence.max_new_tokens)
        # Seeded sampling must repeat its text: only a new generator starts its random
        # generator from the seed. og's guidance keeps grammar state: never shared either.
        parkable = sequence.request.constraint is None and "random_seed" not in options
        scorer = PromptScorer.of(sequence, self._piece)
        reused = None
        if parkable and scorer is None:  # scoring needs every prompt position's logits
            reused = self.idle.take(sequence.prompt_ids, key, needed)
        if reused is not None:
            idle, shared = reused
            generator, max_length = idle.generator, idle.max_length
            # Prompt tokens evaluated again: at least the last (its logits give token one), and
            # one more so that og runs its prompt kernels (one token alone takes its decoding
            # kernels, whose logits differ in the last digits from a cold prefill's).
            sequence.cached_prompt_tokens = max(0, min(shared, len(prompt) - REEVALUATED_TOKENS))
            # Should og raise here, the generator is lost with the request: never parked.
            generator.rewind_to(sequence.cached_prompt_tokens)
            generator.append_tokens(prompt[sequence.cached_prompt_tokens :])
            log.debug(
                "request %s continues a parked generator: %d of %d prompt tokens cached",
                sequence.request_id,
                sequence.cached_prompt_tokens,
                len(prompt),
            )
        else:
            # Room for a next turn that continues it (a chat sends the conversation again).
            max_length = max_length_with_room(needed, self._context_length) if parkable else needed
            max_length = max(max_length, self._min_length)
            self.idle.make_room(max_length + sum(s.max_length for s in self._slots.values()))
            generator = self._new_generator(sequence, {**options, "max_length": max_length})
            self._prefill(generator, prompt, scorer)
        stream = self._tokenizer.create_stream()
        slot = _GeneratorSlot(sequence, generator, stream, sampling, max_length, key, parkable)
        slot.prefilled = list(sequence.prefilled(None if scorer is None else scorer.event()))
        return slot

    @staticmethod
    def _prefill(generator: Any, prompt: np.ndarray, scorer: PromptScorer | None) -> None:
        if scorer is None:
            generator.append_tokens(prompt)
            return
        # After append_tokens, og's "logits" output holds every appended position's.
        for start in range(0, len(prompt), SCORING_CHUNK):
            generator.append_tokens(prompt[start : start + SCORING_CHUNK])
            scorer.score_rows(np.asarray(generator.get_output("logits")), start)

    @staticmethod
    def _search_options(sampling: SamplingParams) -> dict[str, Any]:
        options: dict[str, Any] = {
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
        return options

    def _new_generator(self, sequence: Sequence, options: dict[str, Any]) -> Any:
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(**options)
        constraint = sequence.request.constraint
        if constraint is not None:
            params.set_guidance("json_schema", guidance_schema(constraint))
        return self._og.Generator(self._model, params)

    def _park(self, slot: _GeneratorSlot) -> None:
        """Keep the generator of a request that ended normally or was cancelled."""
        if not slot.parkable:
            return
        # og feeds a sampled token to the model only at the next step: the last token of the
        # sequence has no keys and values in the cache yet.
        try:
            held = [int(token) for token in slot.generator.get_sequence(0)][:-1]
        except RuntimeError:  # a generator og no longer answers for is not worth keeping
            return
        self.idle.park(IdleGenerator(slot.generator, held, slot.max_length, slot.options))

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
        min_length: int = 0,
    ):
        self._og, self._tokenizer = og, tokenizer
        self._eos_ids = eos_ids
        self._context_length = context_length
        self._min_length = min_length  # a sliding window's size (see InterleavedGenerators)
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
        options.set_max_session_tokens(max(self._context_length, self._min_length))
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
