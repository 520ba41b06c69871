"""ONNX Runtime GenAI models (a model folder with genai_config.json) on cpu, cuda or dml.

Concurrent requests are scheduled by engines/onnx_scheduling.py: interleaved generators (every
sampling option) or og.Engine batches, as the model's `batching` setting says. og samples
natively (temperature, top_p, top_k, repetition penalty, seed); OpenAI's presence and frequency
penalties and min_p are applied to the logits where the scheduler allows it. Interleaved
generators are kept after their requests end, so that a conversation that continues prefills
only its new tokens (engines/onnx_prefix_cache.py). The chat template comes from the folder and
is rendered by the same code as for GGUF models.

og's bindings hold the GIL through a whole prefill: this engine only ever runs inside its own
worker process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import (
    Accepted,
    Engine,
    EngineInfo,
    Event,
    Failed,
    GenerationRequest,
    JsonConstraint,
)
from engines.config import ModelConfig
from engines.cpus import cpu_quota
from engines.errors import EngineError, InvalidRequestError, ModelLoadError
from engines.onnx_scheduling import (
    InterleavedGenerators,
    OgEngineBatches,
    Scheduler,
    guidance_schema,
)
from engines.prompting import PromptBuilder
from engines.providers import (
    AvailabilityProbes,
    check_single_runtime,
    installed_runtimes,
    resolve_provider,
)
from engines.sampling import OPENAI_DEFAULTS
from engines.templates import ChatTemplate

try:
    import onnxruntime_genai as og
except ImportError:  # reported as a failed model with the install command, at load time
    og = None

log = logging.getLogger("slmserve.engines.onnx")

DEFAULT_CONTEXT_CAP = 4096  # og allocates the KV cache for max_length up front


# How fill-in-the-middle tokens are spelled in the vocabularies llama.cpp recognises too.
_FIM_SPELLINGS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<PRE>", "<SUF>", "<MID>"),
)


def _token_text(value: Any) -> str:
    """tokenizer_config.json writes special tokens as a string or {"content": ...}."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _post_processor_starts_with(tokenizer_file: dict[str, Any], token: str | None) -> bool:
    """Whether tokenizer.json's post-processor puts `token` first in a single sequence (how
    Gemma's converted tokenizer says it wants BOS, with no add_bos_token in its config)."""
    processor = tokenizer_file.get("post_processor")
    if token is None or not isinstance(processor, dict):
        return False
    single = processor.get("single")
    if processor.get("type") != "TemplateProcessing" or not isinstance(single, list) or not single:
        return False
    first = single[0].get("SpecialToken") if isinstance(single[0], dict) else None
    return isinstance(first, dict) and first.get("id") == token


class OgTokenizer:
    """onnxruntime-genai's tokenizer in the shape prompt building wants (engines/prompting.py).

    og's `encode` never adds BOS and always reads special-token spellings as special tokens;
    BOS and the fill-in-the-middle tokens come from the folder's tokenizer files."""

    def __init__(self, tokenizer: Any, folder: Path, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        config = _read_json(folder / "tokenizer_config.json")
        tokenizer_file = _read_json(folder / "tokenizer.json")
        special = {
            str(token.get("content")): int(token["id"])
            for token in tokenizer_file.get("added_tokens", [])
            if isinstance(token, dict) and "id" in token
        }
        self._special_text = {token: text for text, token in special.items()}
        self.bos_text = _token_text(config.get("bos_token")) or None
        self.eos_text = _token_text(config.get("eos_token")) or None
        bos = special.get(_token_text(config.get("bos_token")))
        self._bos_id = bos
        adds_bos = config.get("add_bos_token")
        if adds_bos is None:  # transformers 5 says it in the tokenizer's post-processor only
            adds_bos = _post_processor_starts_with(tokenizer_file, self.bos_text)
        self.adds_bos = bool(adds_bos) and bos is not None
        self.fim_markers: tuple[int, int, int] | None = next(
            (
                (special[p], special[s], special[m])
                for p, s, m in _FIM_SPELLINGS
                if p in special and s in special and m in special
            ),
            None,
        )

    def encode(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        text.encode(
            "utf-8"
        )  # the UnicodeEncodeError llama.cpp's tokenizer raises, not og's TypeError
        ids = [int(token) for token in self._tokenizer.encode(text)]
        if add_bos and self._bos_id is not None:
            ids.insert(0, self._bos_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        """og's decode drops special tokens: they are spelled out here, the runs between them
        decoded by og, so that decoding what encode gave returns the text."""
        parts: list[str] = []
        run: list[int] = []
        for token in [*ids, -1]:
            special = self._special_text.get(token)
            if special is None and token >= 0:
                run.append(token)
                continue
            if run:
                parts.append(str(self._tokenizer.decode(np.asarray(run, dtype=np.int32))))
                run = []
            if special is not None:
                parts.append(special)
        return "".join(parts)

    def piece(self, token: int) -> bytes:
        """One token's text as bytes (a part of a UTF-8 character shows as U+FFFD)."""
        return self.decode([token]).encode("utf-8")


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
        eos_ids = {int(token) for token in self._tokenizer.eos_token_ids}
        genai_config = json.loads((folder / "genai_config.json").read_text())
        trained = int(genai_config["model"].get("context_length", DEFAULT_CONTEXT_CAP))
        self._vocab_size = int(genai_config["model"]["vocab_size"])
        self._valid_guidance: set[str] = set()
        self._context_length = min(config.context_length or DEFAULT_CONTEXT_CAP, trained)
        window = genai_config["model"]["decoder"].get("sliding_window") or {}
        min_length = int(window.get("window_size") or 0)
        template = self._load_template(folder, config)
        tokenizer = OgTokenizer(self._tokenizer, folder, self._vocab_size)
        self._special_tokens = (tokenizer.bos_text, tokenizer.eos_text)
        self._prompts = PromptBuilder(
            config.name,
            template,
            tokenizer,
            context_length=self._context_length,
            default_max_tokens=config.defaults.max_tokens,
        )
        self._defaults = config.defaults.sampling_params().over(OPENAI_DEFAULTS)
        batching = config.batching
        if batching == "auto":
            batching = "engine" if provider == "cuda" else "interleaved"
        self._scheduler: Scheduler
        if batching == "engine":
            self._scheduler = OgEngineBatches(
                og,
                self._model,
                self._tokenizer,
                eos_ids,
                config.parallel,
                self._context_length,
                min_length,
            )
        else:
            self._scheduler = InterleavedGenerators(
                og,
                self._model,
                self._tokenizer,
                eos_ids,
                config.parallel,
                tokenizer.piece,
                self._context_length,
                min_length,
            )
        log.info("scheduling concurrent requests with %s", batching)
        self.info = EngineInfo(
            engine="onnx",
            provider=provider,
            context_length=self._context_length,
            parallel=config.parallel,
            has_chat_template=template is not None,
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
        # Unset: ONNX Runtime's default (physical cores), unless a container CPU limit is lower.
        threads = config.n_threads or cpu_quota()
        if threads:
            session = {"session_options": {"intra_op_num_threads": threads}}
            og_config.overlay(json.dumps({"model": {"decoder": session}}))
        try:
            return og.Model(og_config)
        except Exception as error:  # the runtime's own message says what is missing
            raise ModelLoadError(
                f"onnxruntime-genai could not load {folder} with provider {provider}: {error}"
            ) from error

    @staticmethod
    def _load_template(folder: Path, config: ModelConfig) -> ChatTemplate | None:
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
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

    def _check_guidance(self, constraint: JsonConstraint) -> None:
        """og compiles a grammar when a generator is made: try a tiny one, once per schema."""
        try:
            schema = guidance_schema(constraint)
        except InvalidRequestError as error:  # name the field the schema came from
            raise InvalidRequestError(error.message, param=constraint.param) from error
        if schema in self._valid_guidance:
            return
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=2)
        params.set_guidance("json_schema", schema)
        try:
            og.Generator(self._model, params)
        except RuntimeError as error:  # nothing but the grammar can fail on so small a generator
            raise InvalidRequestError(
                f"the JSON schema cannot be used: {error}", param=constraint.param
            ) from error
        self._valid_guidance.add(schema)

    def prompt_ids(self, request: GenerationRequest, *, add_special: bool = True) -> list[int]:
        return self._prompts.prompt_ids(request, add_special=add_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._prompts.decode(list(token_ids))

    def render_prompt(self, request: GenerationRequest) -> str:
        return self._prompts.render(request)

    def special_tokens(self) -> tuple[str | None, str | None]:
        return self._special_tokens

    def submit(self, request: GenerationRequest) -> Event:
        sampling = request.sampling.over(self._defaults)
        try:
            self._scheduler.check(request, sampling)
            sequence = self._prompts.sequence(request)
            if request.constraint is not None:
                self._check_guidance(request.constraint)
        except EngineError as error:
            return Failed.of(request.request_id, error)
        self._scheduler.add(sequence, sampling)
        return Accepted(request.request_id, len(sequence.prompt_ids))

    def has_work(self) -> bool:
        return self._scheduler.has_work()

    def cancel(self, request_id: str) -> None:
        self._scheduler.cancel(request_id)

    def step(self) -> list[Event]:
        return self._scheduler.step()

    def close(self) -> None:
        self._scheduler.close()
        self._tokenizer = None
        self._model = None
