"""GGUF models on llama.cpp (llama-cpp-python's C API), several requests in one context.

One llama.cpp context holds `parallel` sequences (slots), each with its own KV window of
`context_length` tokens. Every `step` builds one `llama_batch`: the last sampled token of each
generating slot, then prompt tokens of slots still prefilling, in chunks small enough that a long
prompt never stalls the running streams for long. Each slot samples with its own sampler chain
(its own temperature, penalties and seed). A finished or cancelled slot drops its KV cells with
`llama_memory_seq_rm` and takes the next waiting request.

Prefix reuse: a slot keeps its KV cells after its request ends. A request that continues what
a free slot holds (a multi-turn chat sends the whole conversation again) goes to that slot; any
other goes to the least recently used free slot, so other conversations keep their caches. When
another slot holds a longer prefix of the prompt (a shared system prompt, the same question asked
again), its sequence is copied into the chosen slot first. Only the cells past the shared
prefix are dropped and only the rest of the prompt is prefilled; usage reports the reused part
as cached tokens.

Prompt log probabilities (echo with logprobs): such a request asks llama.cpp for the logits of
every prompt position, in chunks of at most SCORING_CHUNK tokens, and scores each chunk as soon
as it is decoded. A cached prefix has no logits, so such a request reuses none: it prefills from
position 0 (its cells stay cached for later requests like any other's).

A llama.cpp context is not thread-safe: only the worker's single loop thread touches it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import time
from collections import deque
from collections.abc import Sequence as Ids
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from engines.base import (
    Accepted,
    Engine,
    EngineInfo,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    TokenEvent,
    TokenLogprob,
    unexpected_failure,
)
from engines.config import ModelConfig
from engines.cpus import available_cpus
from engines.errors import (
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    ModelLoadError,
)
from engines.json_grammar import json_object_grammar, json_schema_grammar
from engines.json_schema import constraint_schema
from engines.logprobs import PromptScorer, token_logprob
from engines.prefix_reuse import common_prefix_length, continues
from engines.prompting import PromptBuilder
from engines.sampling import OPENAI_DEFAULTS, SamplingParams
from engines.sequence import Sequence
from engines.templates import ChatTemplate

log = logging.getLogger("slmserve.engines.gguf")

# Tokens per llama_decode call; also the largest prefill chunk when nothing else is generating.
BATCH_TOKENS = 512
# Prompt tokens one prompt adds per step while other slots are generating: bounds their token
# latency without holding every new prompt back behind one budget.
PREFILL_CHUNK_WHILE_DECODING = 128
# Copy another slot's cache when it shares this many more prompt tokens: a copy moves the whole
# sequence buffer (llama.cpp copies across sequences only whole), measured at about the cost of
# two prompt tokens (4.5 ms for the default model's 2,048-token slot on 2 cores).
MIN_PREFIX_COPY_TOKENS = 4
DEFAULT_CONTEXT_CAP = 8192
# Prompt tokens per step whose logits are all kept (prompt log probabilities): bounds llama.cpp's
# output buffer to this many vocabulary-sized rows.
SCORING_CHUNK = 128

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_LLAMA_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


def _forward_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp chats a lot at load time; keep only warnings and errors.
    python_level = _LLAMA_LOG_LEVELS.get(level, logging.DEBUG)
    if python_level >= logging.WARNING and text:
        log.log(python_level, "llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


# Created once and kept alive for the process: llama.cpp stores the raw function pointer.
_LLAMA_LOG_CALLBACK = llama_cpp.llama_log_callback(_forward_llama_log)


@dataclass(slots=True)
class _Slot:
    """One llama.cpp sequence id, the tokens its KV cells hold, and the request it serves."""

    seq_id: int
    sequence: Sequence | None = None
    sampler: llama_cpp.llama_sampler_p | None = None
    pending_prompt: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)  # tokens in the KV cache, by position
    last_token: int = 0
    logits_index: int = -1  # position of this slot's logits in the last batch, -1 if none
    just_prefilled: bool = False  # the last batch held the end of this slot's prompt
    scorer: PromptScorer | None = None  # the prompt's log probabilities, when asked for
    scored: list[tuple[int, int]] = field(default_factory=list)  # (batch index, prompt position)
    last_admitted: int = 0  # admission counter value, for least-recently-used choice

    @property
    def n_past(self) -> int:
        return len(self.cached)

    @property
    def is_free(self) -> bool:
        return self.sequence is None

    @property
    def is_generating(self) -> bool:
        return self.sequence is not None and not self.pending_prompt


@dataclass(slots=True)
class _Waiting:
    sequence: Sequence
    sampling: SamplingParams
    grammar: str | None = None


class LlamaTokenizer:
    """llama.cpp's tokenizer calls, in the shape prompt building wants (engines/prompting.py)."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self.vocab_size: int = llama_cpp.llama_vocab_n_tokens(vocab)
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        markers = (
            llama_cpp.llama_vocab_fim_pre(vocab),
            llama_cpp.llama_vocab_fim_suf(vocab),
            llama_cpp.llama_vocab_fim_mid(vocab),
        )
        self.fim_markers = markers if min(markers) >= 0 else None
        self._piece_buffer = ctypes.create_string_buffer(256)

    def encode(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), tokens, capacity, add_bos, special
            )
            if count >= 0:
                return list(tokens[:count])
            capacity = -count

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens spelled out, nothing stripped (encode's inverse)."""
        tokens = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        capacity = 8 * len(ids) + 16
        while True:
            buffer = ctypes.create_string_buffer(capacity)
            length = llama_cpp.llama_detokenize(
                self._vocab, tokens, len(ids), buffer, capacity, False, True
            )
            if length >= 0:
                return buffer.raw[:length].decode("utf-8", "replace")
            capacity = -length

    def piece(self, token: int, *, special: bool = False) -> bytes:
        length = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._piece_buffer, len(self._piece_buffer), 0, special
        )
        if length < 0:
            self._piece_buffer = ctypes.create_string_buffer(-length)
            length = llama_cpp.llama_token_to_piece(
                self._vocab, token, self._piece_buffer, len(self._piece_buffer), 0, special
            )
        return self._piece_buffer.raw[:length]

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", "replace")


class GGUFEngine(Engine):
    """A GGUF model served by llama.cpp with continuous batching over `parallel` slots."""

    def __init__(self, config: ModelConfig) -> None:
        started = time.perf_counter()
        self._config = config
        llama_cpp.llama_log_set(_LLAMA_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        provider = self._resolve_provider(config.provider)
        if not config.path.is_file():
            raise ModelLoadError(f"GGUF file not found: {config.path}")

        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = -1 if provider == "cuda" else 0
        self._model = llama_cpp.llama_model_load_from_file(str(config.path).encode(), model_params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {config.path} (not a valid GGUF?)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._tokenizer = LlamaTokenizer(self._vocab)
        self._n_vocab = self._tokenizer.vocab_size

        trained = llama_cpp.llama_model_n_ctx_train(self._model)
        self._context_length = config.context_length or min(trained, DEFAULT_CONTEXT_CAP)
        parallel = config.parallel
        threads = config.n_threads or available_cpus()
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = self._context_length * parallel
        context_params.n_seq_max = parallel
        context_params.n_batch = BATCH_TOKENS
        context_params.n_ubatch = BATCH_TOKENS
        context_params.n_threads = threads
        context_params.n_threads_batch = threads
        # Each slot gets its own KV window, so one long conversation never starves the others.
        context_params.kv_unified = False
        self._context = llama_cpp.llama_init_from_model(self._model, context_params)
        if not self._context:
            llama_cpp.llama_model_free(self._model)
            raise ModelLoadError(
                f"llama.cpp could not create a context of {context_params.n_ctx} tokens"
            )
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)

        template = self._load_template(config)
        self._prompts = PromptBuilder(
            config.name,
            template,
            self._tokenizer,
            context_length=self._context_length,
            default_max_tokens=config.defaults.max_tokens,
        )
        self._defaults = config.defaults.sampling_params().over(OPENAI_DEFAULTS)
        self._slots = [_Slot(seq_id=i) for i in range(parallel)]
        self._embedding_context: llama_cpp.llama_context_p | None = None
        self._embedding_batch: Any = None  # a llama_batch, made with the embedding context
        self._admissions = 0
        self._waiting: deque[_Waiting] = deque()
        self.info = EngineInfo(
            engine="gguf",
            provider=provider,
            context_length=self._context_length,
            parallel=parallel,
            has_chat_template=template is not None,
            load_seconds=time.perf_counter() - started,
        )

    # -- loading -------------------------------------------------------------------------

    @staticmethod
    def _resolve_provider(requested: str) -> str:
        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        if requested == "dml":
            raise ModelLoadError(
                "llama.cpp has no DirectML backend; serve an ONNX model with provider dml instead"
            )
        if requested == "cuda" and not gpu:
            raise ModelLoadError(
                "provider cuda requested but this llama-cpp-python build has no GPU offload "
                "(rebuild it with CMAKE_ARGS=-DGGML_CUDA=on)"
            )
        if requested == "auto":
            return "cuda" if gpu else "cpu"
        return requested

    def _metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        length = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        if length < 0:
            return None
        if length >= len(buffer):
            buffer = ctypes.create_string_buffer(length + 1)
            llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace")

    def _load_template(self, config: ModelConfig) -> ChatTemplate | None:
        source = config.chat_template_source() or self._metadata("tokenizer.chat_template")
        if not source:
            return None
        return ChatTemplate(
            source,
            bos_token=self._tokenizer.token_text(llama_cpp.llama_vocab_bos(self._vocab)),
            eos_token=self._tokenizer.token_text(llama_cpp.llama_vocab_eos(self._vocab)),
        )

    # -- requests ------------------------------------------------------------------------

    def _grammar(self, request: GenerationRequest) -> str | None:
        """The request's JSON constraint as GBNF, checked to compile in llama.cpp."""
        constraint = request.constraint
        if constraint is None:
            return None
        if constraint.schema is None:
            grammar = json_object_grammar()
        else:
            try:
                grammar = json_schema_grammar(json.dumps(constraint_schema(constraint)))
            except InvalidRequestError as error:  # name the field the schema came from
                raise InvalidRequestError(error.message, param=constraint.param) from error
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            raise InvalidRequestError(
                "the JSON schema gave a grammar llama.cpp cannot use", param=constraint.param
            )
        llama_cpp.llama_sampler_free(sampler)
        return grammar

    def prompt_ids(self, request: GenerationRequest, *, add_special: bool = True) -> list[int]:
        return self._prompts.prompt_ids(request, add_special=add_special)

    def detokenize(self, token_ids: Ids[int]) -> str:
        return self._prompts.decode(list(token_ids))

    def render_prompt(self, request: GenerationRequest) -> str:
        return self._prompts.render(request)

    def special_tokens(self) -> tuple[str | None, str | None]:
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        eos = llama_cpp.llama_vocab_eos(self._vocab)
        text = self._tokenizer.token_text
        return (text(bos) if bos >= 0 else None), (text(eos) if eos >= 0 else None)

    def submit(self, request: GenerationRequest) -> Event:
        try:
            sequence = self._prompts.sequence(request)
            grammar = self._grammar(request)
        except EngineError as error:
            return Failed.of(request.request_id, error)
        sampling = request.sampling.over(self._defaults)
        self._waiting.append(_Waiting(sequence, sampling, grammar))
        return Accepted(request.request_id, len(sequence.prompt_ids))

    def has_work(self) -> bool:
        return bool(self._waiting) or any(not slot.is_free for slot in self._slots)

    def cancel(self, request_id: str) -> None:
        for waiting in self._waiting:
            if waiting.sequence.request_id == request_id:
                self._waiting.remove(waiting)
                return
        for slot in self._slots:
            if slot.sequence is not None and slot.sequence.request_id == request_id:
                self._release(slot)
                return

    def step(self) -> list[Event]:
        events = self._admit_waiting()
        scheduled = self._fill_batch()
        if not scheduled:
            return events
        status = llama_cpp.llama_decode(self._context, self._batch)
        if status != 0:
            return events + self._fail_batch(scheduled, status)
        for slot in scheduled:
            sequence = slot.sequence
            if sequence is None or slot.sampler is None:
                continue
            produced: list[Event]
            try:
                produced = self._after_decode(slot, sequence)
            except Exception as error:  # one request's failure is that request's alone
                produced = [unexpected_failure(sequence.request_id, "generating", error)]
            events.extend(produced)
            if produced and isinstance(produced[-1], Finished | Failed):
                self._release(slot, keep_cache=isinstance(produced[-1], Finished))
        return events

    def _after_decode(self, slot: _Slot, sequence: Sequence) -> list[Event]:
        """Score the prompt positions just decoded; once the prompt is in, sample."""
        if slot.scorer is not None:
            for batch_index, position in slot.scored:
                slot.scorer.score(position, self._logits(batch_index))
            slot.scored = []
        if slot.logits_index < 0:
            return []  # still prefilling
        produced: list[Event] = []
        if slot.just_prefilled:
            produced.extend(sequence.prefilled(slot.scorer.event() if slot.scorer else None))
            slot.scorer = None
            if produced and isinstance(produced[-1], Finished):
                return produced
        produced.extend(self._advance(slot, sequence))
        return produced

    def _advance(self, slot: _Slot, sequence: Sequence) -> list[TokenEvent | Finished]:
        """Sample the slot's next token from the last batch and account it."""
        token = self._sample(slot)
        is_end = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        logprob = None
        if sequence.request.logprobs is not None:
            logprob = self._logprob(slot.logits_index, token, sequence.request.logprobs)
        piece = b"" if is_end else self._detokenize(token)
        produced = sequence.accept(token, piece, is_end=is_end, logprob=logprob)
        slot.last_token = token
        if not isinstance(produced[-1], Finished) and slot.n_past >= self._context_length:
            produced.append(sequence.finish("length"))
        return produced

    def _sample(self, slot: _Slot) -> int:
        token: int = llama_cpp.llama_sampler_sample(slot.sampler, self._context, slot.logits_index)
        return token

    def _detokenize(self, token: int) -> bytes:
        return self._tokenizer.piece(token)

    def _embedding(self) -> llama_cpp.llama_context_p:
        """A second context for embeddings, made on first use (generation never pays for it)."""
        if self._embedding_context is None:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = self._context_length
            params.n_seq_max = 1
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            threads = self._config.n_threads or available_cpus()
            params.n_threads = params.n_threads_batch = threads
            self._embedding_context = llama_cpp.llama_init_from_model(self._model, params)
            if not self._embedding_context:
                raise EngineError("llama.cpp could not create an embedding context")
            self._embedding_batch = llama_cpp.llama_batch_init(self._context_length, 0, 1)
        return self._embedding_context

    def embed_text(self, text: str, index: int) -> tuple[list[float], int]:
        """Mean-pooled, L2-normalised embedding of one input, and its token count."""
        context = self._embedding()
        batch = self._embedding_batch
        tokens = self._tokenizer.encode(text, add_bos=self._tokenizer.adds_bos, special=False)
        if not tokens:
            raise InvalidRequestError(f"input {index} is empty", param="input")
        if len(tokens) > self._context_length:
            raise ContextLengthExceededError(
                f"input {index} has {len(tokens)} tokens; this model embeds at most "
                f"{self._context_length}",
                param="input",
            )
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(context), True)
        batch.n_tokens = len(tokens)
        for position, token in enumerate(tokens):
            batch.token[position] = token
            batch.pos[position] = position
            batch.n_seq_id[position] = 1
            batch.seq_id[position][0] = 0
            batch.logits[position] = True
        status = llama_cpp.llama_decode(context, batch)
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status} while embedding")
        width = llama_cpp.llama_model_n_embd(self._model)
        pooled = llama_cpp.llama_get_embeddings_seq(context, 0)
        vector = np.ctypeslib.as_array(pooled, shape=(width,)).astype(np.float64)
        norm = float(np.linalg.norm(vector)) or 1.0
        return (vector / norm).tolist(), len(tokens)

    def close(self) -> None:
        for slot in self._slots:
            self._release(slot, keep_cache=False)
        self._waiting.clear()
        if self._embedding_context is not None:
            llama_cpp.llama_batch_free(self._embedding_batch)
            llama_cpp.llama_free(self._embedding_context)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._context)
        llama_cpp.llama_model_free(self._model)

    # -- scheduling ----------------------------------------------------------------------

    def _admit_waiting(self) -> list[Event]:
        """Give free slots to waiting requests; a request that cannot start fails alone."""
        failures: list[Event] = []
        while self._waiting:
            free = [slot for slot in self._slots if slot.is_free]
            if not free:
                break
            waiting = self._waiting.popleft()
            prompt = waiting.sequence.prompt_ids
            slot = self._choose_slot(free, prompt)
            try:
                if waiting.sequence.request.prompt_logprobs is None:
                    reused = self._prepare_prefix(slot, prompt)
                else:  # every prompt position's logits are needed: nothing cached has them
                    reused = self._keep_prefix(slot, 0)
                    slot.scorer = PromptScorer.of(waiting.sequence, self._prompt_piece)
                sampler = self._build_sampler(waiting)
            except Exception as error:
                self._release(slot, keep_cache=False)
                failures.append(unexpected_failure(waiting.sequence.request_id, "starting", error))
                continue
            self._admissions += 1
            slot.last_admitted = self._admissions
            waiting.sequence.cached_prompt_tokens = reused
            slot.sequence = waiting.sequence
            slot.sampler = sampler
            slot.pending_prompt = prompt[reused:]
        return failures

    @staticmethod
    def _choose_slot(free: list[_Slot], prompt: list[int]) -> _Slot:
        """The free slot this prompt continues, else the least recently used one."""
        shared = {slot.seq_id: common_prefix_length(slot.cached, prompt) for slot in free}
        best = max(free, key=lambda slot: shared[slot.seq_id])
        if continues(best.n_past, shared[best.seq_id]):
            return best
        return min(free, key=lambda slot: slot.last_admitted)

    def _prepare_prefix(self, slot: _Slot, prompt: list[int]) -> int:
        """Leave in the slot's cache the longest prefix of `prompt` on offer; returns its length."""
        shared = common_prefix_length(slot.cached, prompt)
        donor = max(
            (other for other in self._slots if other is not slot),
            key=lambda other: common_prefix_length(other.cached, prompt),
            default=None,
        )
        if donor is not None:
            offered = common_prefix_length(donor.cached, prompt)
            if offered >= shared + MIN_PREFIX_COPY_TOKENS:
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                # Whole sequences only (-1, -1): llama.cpp asserts on partial cross-stream copies.
                llama_cpp.llama_memory_seq_cp(self._memory, donor.seq_id, slot.seq_id, -1, -1)
                slot.cached = list(donor.cached)
                shared = offered
        # At least the last prompt token is evaluated again: its logits give token one.
        return self._keep_prefix(slot, min(shared, len(prompt) - 1))

    def _keep_prefix(self, slot: _Slot, keep: int) -> int:
        """Drop the slot's KV cells past `keep` tokens; returns how many were kept."""
        memory, seq_id = self._memory, slot.seq_id
        if keep < slot.n_past and not llama_cpp.llama_memory_seq_rm(memory, seq_id, keep, -1):
            keep = 0  # this memory cannot drop a partial sequence
        # Sliding-window caches prune early cells: a prefix without position 0 is unusable.
        if keep and llama_cpp.llama_memory_seq_pos_min(memory, seq_id) > 0:
            keep = 0
        if keep == 0:
            llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
        del slot.cached[keep:]
        return keep

    def _fill_batch(self) -> list[_Slot]:
        """Put this step's tokens in the batch: one per generating slot, then prompt chunks."""
        batch = self._batch
        batch.n_tokens = 0
        scheduled: list[_Slot] = []
        generating = [slot for slot in self._slots if slot.is_generating]
        for slot in generating:
            slot.logits_index = self._add_token(slot, slot.last_token, logits=True)
            slot.just_prefilled = False
            scheduled.append(slot)
        budget = BATCH_TOKENS - len(generating)
        # While others decode each prompt takes at most a chunk per step; shortest first, so a
        # short prompt gets its first token in the next step rather than behind a long one.
        per_prompt = PREFILL_CHUNK_WHILE_DECODING if generating else BATCH_TOKENS
        for slot in sorted(self._slots, key=lambda slot: len(slot.pending_prompt)):
            if budget <= 0:
                break
            if slot.sequence is None or not slot.pending_prompt:
                continue
            scoring = slot.scorer is not None
            take = min(budget, per_prompt)
            chunk = slot.pending_prompt[: min(take, SCORING_CHUNK) if scoring else take]
            del slot.pending_prompt[: len(chunk)]
            budget -= len(chunk)
            last = len(chunk) - 1
            for offset, token in enumerate(chunk):
                position = slot.n_past
                index = self._add_token(slot, token, logits=scoring or offset == last)
                if scoring:
                    slot.scored.append((index, position))
            # Logits only when the whole prompt is in: that is where the first token is sampled.
            slot.just_prefilled = not slot.pending_prompt
            slot.logits_index = -1 if slot.pending_prompt else index
            scheduled.append(slot)
        return scheduled

    def _add_token(self, slot: _Slot, token: int, *, logits: bool) -> int:
        batch = self._batch
        index: int = batch.n_tokens
        batch.token[index] = token
        batch.pos[index] = slot.n_past
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = slot.seq_id
        batch.logits[index] = logits
        batch.n_tokens = index + 1
        slot.cached.append(token)
        return index

    def _fail_batch(self, scheduled: list[_Slot], status: int) -> list[Event]:
        error = EngineError(f"llama_decode failed with status {status}")
        events: list[Event] = []
        for slot in scheduled:
            if slot.sequence is not None:
                events.append(Failed.of(slot.sequence.request_id, error))
            self._release(slot, keep_cache=False)
        return events

    def _release(self, slot: _Slot, *, keep_cache: bool = True) -> None:
        """Free the slot; by default its KV cells stay for a request sharing the prefix."""
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached.clear()
        slot.sequence = None
        slot.sampler = None
        slot.pending_prompt = []
        slot.logits_index = -1
        slot.just_prefilled = False
        slot.scorer = None
        slot.scored = []

    def _logits(self, batch_index: int) -> np.ndarray:
        """The raw logits (before sampling settings, bias or grammar) at a batch position."""
        pointer = llama_cpp.llama_get_logits_ith(self._context, batch_index)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _prompt_piece(self, token: int) -> bytes:
        return self._tokenizer.piece(token, special=True)

    def _logprob(self, logits_index: int, token: int, top: int) -> TokenLogprob:
        return token_logprob(self._logits(logits_index), token, top, self._prompt_piece)

    def _build_sampler(self, waiting: _Waiting) -> llama_cpp.llama_sampler_p:
        sampling, sequence = waiting.sampling, waiting.sequence
        chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )

        def add(sampler: llama_cpp.llama_sampler_p) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if waiting.grammar is not None:
            # First: the grammar masks out every token that would break the document.
            add(
                llama_cpp.llama_sampler_init_grammar(self._vocab, waiting.grammar.encode(), b"root")
            )
        bias = sequence.request.logit_bias
        if bias:
            entries = (llama_cpp.llama_logit_bias * len(bias))()
            for entry, (token, value) in zip(entries, bias, strict=True):
                entry.token, entry.bias = token, value
            add(llama_cpp.llama_sampler_init_logit_bias(self._n_vocab, len(bias), entries))

        repeat = sampling.repetition_penalty or 1.0
        frequency = sampling.frequency_penalty or 0.0
        presence = sampling.presence_penalty or 0.0
        if repeat != 1.0 or frequency != 0.0 or presence != 0.0:
            # Penalise over everything this request generates (OpenAI: "the text so far").
            window = max(1, sequence.max_new_tokens)
            add(
                llama_cpp.llama_sampler_init_penalties(
                    self._n_vocab, window, repeat, frequency, presence
                )
            )
        if sampling.is_greedy:
            add(llama_cpp.llama_sampler_init_greedy())
            return chain
        if sampling.top_k:
            add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p is not None and sampling.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p:
            add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(sampling.temperature or 1.0))
        seed = sampling.seed_u32()
        add(
            llama_cpp.llama_sampler_init_dist(
                llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed
            )
        )
        return chain
