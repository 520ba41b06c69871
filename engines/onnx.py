"""ONNX Runtime GenAI models (a model folder with genai_config.json) on cpu, cuda or dml.

Each slot owns an `og.Generator` (its own KV cache); a step advances every active generator by
one token, so `parallel` requests interleave fairly. og samples natively (temperature, top_p,
top_k, repetition penalty, seed); what it lacks — OpenAI's presence and frequency penalties and
min_p — is applied to the logits between the forward pass and sampling (`get_logits` /
`set_logits`). The chat template comes from the folder and is rendered by the same code as for
GGUF models.

og's bindings hold the GIL through a whole prefill: this engine only ever runs inside its own
worker process.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import (
    Accepted,
    Engine,
    EngineInfo,
    Event,
    Failed,
    Finished,
    GenerationRequest,
)
from engines.config import ModelConfig
from engines.errors import EngineError, InvalidRequestError, ModelLoadError
from engines.providers import (
    AvailabilityProbes,
    check_single_runtime,
    installed_runtimes,
    resolve_provider,
)
from engines.sampling import OPENAI_DEFAULTS, SamplingParams
from engines.sequence import Sequence, completion_budget
from engines.templates import ChatTemplate

try:
    import onnxruntime_genai as og
except ImportError:  # reported as a failed model with the install command, at load time
    og = None

log = logging.getLogger("slmserve.engines.onnx")

DEFAULT_CONTEXT_CAP = 4096  # og allocates the KV cache for max_length up front


def _token_text(value: Any) -> str:
    """tokenizer_config.json writes special tokens as a string or {"content": ...}."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


@dataclass
class _Slot:
    sequence: Sequence
    generator: Any  # og.Generator
    stream: Any  # og.TokenizerStream
    sampling: SamplingParams
    counts: dict[int, int]  # generated token -> times, for presence/frequency penalties

    @property
    def edits_logits(self) -> bool:
        return bool(
            self.sampling.presence_penalty or self.sampling.frequency_penalty or self.sampling.min_p
        )


class OnnxEngine(Engine):
    """An ONNX Runtime GenAI model with `parallel` interleaved generators."""

    def __init__(self, config: ModelConfig) -> None:
        started = time.perf_counter()
        if og is None:
            check_single_runtime([])
        check_single_runtime(installed_runtimes())
        self._config = config
        folder = config.path
        if not (folder / "genai_config.json").is_file():
            raise ModelLoadError(
                f"{folder} is not an ONNX Runtime GenAI model folder (no genai_config.json); "
                "convert a model with `slmserve convert`"
            )
        probes = AvailabilityProbes(cuda=og.is_cuda_available, dml=og.is_dml_available)
        provider = resolve_provider(config.provider, probes)
        log.info("provider %s (asked for %s)", provider, config.provider)
        self._model = self._load_model(folder, provider, config)
        self._tokenizer = og.Tokenizer(self._model)
        self._eos_ids = {int(token) for token in self._tokenizer.eos_token_ids}
        genai_config = json.loads((folder / "genai_config.json").read_text())
        trained = int(genai_config["model"].get("context_length", DEFAULT_CONTEXT_CAP))
        self._context_length = min(config.context_length or DEFAULT_CONTEXT_CAP, trained)
        self._template = self._load_template(folder, config)
        self._defaults = config.defaults.sampling_params().over(OPENAI_DEFAULTS)
        self._slots: dict[str, _Slot] = {}
        self._waiting: deque[tuple[Sequence, SamplingParams]] = deque()
        self.info = EngineInfo(
            engine="onnx",
            provider=provider,
            context_length=self._context_length,
            parallel=config.parallel,
            has_chat_template=self._template is not None,
            load_seconds=time.perf_counter() - started,
        )

    # -- loading -------------------------------------------------------------------------

    @staticmethod
    def _load_model(folder: Path, provider: str, config: ModelConfig) -> Any:
        og_config = og.Config(str(folder))
        og_config.clear_providers()
        if provider != "cpu":
            og_config.append_provider(provider)
            for key, value in config.provider_options.items():
                og_config.set_provider_option(provider, key, str(value))
        if config.n_threads:
            session = {"session_options": {"intra_op_num_threads": config.n_threads}}
            og_config.overlay(json.dumps({"model": {"decoder": session}}))
        try:
            return og.Model(og_config)
        except Exception as error:  # the runtime's own message says what is missing
            raise ModelLoadError(
                f"onnxruntime-genai could not load {folder} with provider {provider}: {error}"
            ) from error

    @staticmethod
    def _load_template(folder: Path, config: ModelConfig) -> ChatTemplate | None:
        tokenizer_config_path = folder / "tokenizer_config.json"
        tokenizer_config = (
            json.loads(tokenizer_config_path.read_text()) if tokenizer_config_path.is_file() else {}
        )
        template_file = folder / "chat_template.jinja"
        source = config.chat_template_source()
        if source is None and template_file.is_file():
            source = template_file.read_text(encoding="utf-8")
        if source is None:
            source = tokenizer_config.get("chat_template")
        if not source:
            return None
        return ChatTemplate(
            source,
            bos_token=_token_text(tokenizer_config.get("bos_token")),
            eos_token=_token_text(tokenizer_config.get("eos_token")),
        )

    # -- requests ------------------------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt is not None:
            text = request.prompt
        elif self._template is None:
            raise InvalidRequestError(
                f"model {self._config.name!r} has no chat template; set chat_template in "
                "models.yaml or send a raw prompt to /v1/completions",
                param="messages",
            )
        else:
            text = self._template.render(request.messages)
        return [int(token) for token in self._tokenizer.encode(text)]

    def submit(self, request: GenerationRequest) -> Event:
        try:
            prompt_ids = self._prompt_ids(request)
            if not prompt_ids:
                raise InvalidRequestError("the prompt is empty", param="messages")
            budget = completion_budget(
                request, len(prompt_ids), self._context_length, self._config.defaults.max_tokens
            )
        except EngineError as error:
            return Failed.of(request.request_id, error)
        sequence = Sequence(request, prompt_ids, budget)
        self._waiting.append((sequence, request.sampling.over(self._defaults)))
        return Accepted(request.request_id, len(prompt_ids))

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
        self._tokenizer = None
        self._model = None

    def step(self) -> list[Event]:
        events: list[Event] = []
        while self._waiting and len(self._slots) < self._config.parallel:
            sequence, sampling = self._waiting.popleft()
            try:
                self._slots[sequence.request_id] = self._start(sequence, sampling)
            except Exception as error:  # og raises plain RuntimeErrors
                failure = EngineError(f"onnxruntime-genai failed to start generation: {error}")
                events.append(Failed.of(sequence.request_id, failure))
        for request_id, slot in list(self._slots.items()):
            try:
                produced = self._advance(slot)
            except Exception as error:
                failure = EngineError(f"onnxruntime-genai failed while generating: {error}")
                produced = [Failed.of(request_id, failure)]
            events.extend(produced)
            if isinstance(produced[-1], Finished | Failed):
                del self._slots[request_id]
        return events

    # -- generation ----------------------------------------------------------------------

    def _start(self, sequence: Sequence, sampling: SamplingParams) -> _Slot:
        params = og.GeneratorParams(self._model)
        options: dict[str, Any] = {
            "max_length": len(sequence.prompt_ids) + sequence.max_new_tokens,
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
        generator = og.Generator(self._model, params)
        generator.append_tokens(np.asarray(sequence.prompt_ids, dtype=np.int32))
        return _Slot(sequence, generator, self._tokenizer.create_stream(), sampling, {})

    def _advance(self, slot: _Slot) -> list[Event]:
        if slot.edits_logits:
            slot.generator.set_logits(self._edited_logits(slot))
        slot.generator.generate_next_token()
        token = int(slot.generator.get_next_tokens()[0])
        if token in self._eos_ids:
            return [slot.sequence.finish("stop")]
        slot.counts[token] = slot.counts.get(token, 0) + 1
        produced: list[Event] = list(
            slot.sequence.accept(token, slot.stream.decode(token), is_end=False)
        )
        return produced

    @staticmethod
    def _edited_logits(slot: _Slot) -> np.ndarray:
        """OpenAI's presence/frequency penalties and min_p, which og does not implement."""
        logits = np.array(slot.generator.get_logits(), dtype=np.float32, copy=True)
        flat = logits.reshape(-1)
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
