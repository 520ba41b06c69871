"""The model list (models.yaml): which models to serve and how.

Every field carries a description: this file is the reference for models.yaml. Relative paths are
resolved against the directory of the YAML file, so a config works from any working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from engines.sampling import (
    FrequencyPenalty,
    MaxTokens,
    MinP,
    PresencePenalty,
    RepetitionPenalty,
    SamplingParams,
    Seed,
    Temperature,
    TopK,
    TopP,
)

EngineKind = Literal["gguf", "onnx"]
Provider = Literal["cpu", "cuda", "dml", "auto"]

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: object) -> object:
    """Accept 30, "30s", "5m", "1h", "250ms" or -1 (forever); return seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h or -1)")
        return float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration)]


class SamplingDefaults(BaseModel):
    """Sampling values a model uses when a request leaves them out."""

    model_config = ConfigDict(extra="forbid")

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    presence_penalty: PresencePenalty | None = None
    frequency_penalty: FrequencyPenalty | None = None
    seed: Seed | None = None
    max_tokens: MaxTokens | None = Field(
        default=None,
        description="Completion length when a request gives none; unset: up to the context.",
    )

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.model_dump(exclude={"max_tokens"}))


# `parallel: auto` aims for this many tokens of context over all slots.
AUTO_PARALLEL_TOKENS = 16384
AUTO_PARALLEL_MAX = {"gguf": 8, "onnx": 4}
# The context an engine picks when context_length is unset (at most; a model may train less).
DEFAULT_CONTEXT = {"gguf": 8192, "onnx": 4096}


def automatic_parallel(fields: dict[str, object]) -> int:
    """The slot count `parallel: auto` means for a model's (raw) fields."""
    engine = fields.get("engine")
    if engine not in AUTO_PARALLEL_MAX:
        return 1  # validation will name the bad engine
    context = fields.get("context_length")
    if not isinstance(context, int) or context < 1:
        context = DEFAULT_CONTEXT[str(engine)]
    return max(1, min(AUTO_PARALLEL_MAX[str(engine)], AUTO_PARALLEL_TOKENS // context))


class ModelConfig(BaseModel):
    """One served model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The name clients pass as `model`; unique in the file.",
    )
    engine: EngineKind = Field(
        description="`gguf` (llama.cpp) or `onnx` (ONNX Runtime GenAI model folder)."
    )
    path: Path = Field(
        description="GGUF file or ONNX GenAI folder; relative paths start at the YAML file."
    )
    provider: Provider = Field(
        default="auto",
        description="Where it runs: `cpu`, `cuda`, `dml` (DirectML), or `auto` (cuda, then dml, "
        "then cpu, whichever is available).",
    )
    batching: Literal["auto", "interleaved", "engine"] = Field(
        default="auto",
        description="ONNX models only. `interleaved`: one og.Generator per request, stepped in "
        "turn (continuous; every sampling option). `engine`: og.Engine batches requests (on "
        "CPU in static batches, so a request arriving mid-batch waits for the batch to end, and "
        "without seeds, presence/frequency penalties or min_p; on CUDA continuously, with paged "
        "attention). `auto`: engine on cuda, interleaved elsewhere.",
    )
    provider_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Options handed to the execution provider as they are (ONNX models: e.g. "
        "device_id, enable_cuda_graph for cuda).",
    )
    context_length: int | None = Field(
        default=None,
        ge=16,
        description="Tokens per request (prompt + completion); unset: the model's training "
        "context, capped at 8192.",
    )
    parallel: int = Field(
        default=1,  # `auto` when left out: resolved before validation, see _automatic_parallel
        ge=1,
        le=64,
        description="Requests generated at the same time (slots); more wait in the queue. "
        "`auto` (the default): as many slots as share about 16k tokens of context, from 1 to "
        "8 (4 at most for ONNX models, which gain less from concurrency on CPU): 4 slots at "
        "context_length 4096, 8 at 2048. Each GGUF slot keeps its own context_length of KV "
        "cache, so memory grows with slots times context.",
    )
    preload: bool = Field(
        default=True,
        description="Load and warm the model at start-up; false: load on its first request.",
    )
    pinned: bool = Field(
        default=False,
        description="Never unload this model automatically (neither evicted nor idle-unloaded).",
    )
    keep_alive: Duration = Field(
        default=-1,
        description="Idle time after which the model is unloaded (e.g. 30s, 5m); -1: never. "
        "The next request loads it again.",
    )
    max_queue: int = Field(
        default=16,
        ge=0,
        description="Requests that may wait for a slot; beyond it the server answers 429 with "
        "Retry-After.",
    )
    n_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for this model; unset: the CPUs the server may use (its CPU "
        "affinity, capped by a container CPU limit). With several models busy at once, give "
        "each a share: llama.cpp slows down sharply when threads outnumber cores.",
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template replacing the model's own (inline text, or a path to "
        "a file ending in .jinja).",
    )
    defaults: SamplingDefaults = Field(
        default_factory=SamplingDefaults,
        description="Sampling defaults for requests that do not set them.",
    )

    @model_validator(mode="before")
    @classmethod
    def _automatic_parallel(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("parallel", "auto") == "auto":
            data = {**data, "parallel": automatic_parallel(data)}
        return data

    @model_validator(mode="after")
    def _batching_is_for_onnx(self) -> ModelConfig:
        if self.engine == "gguf" and self.batching != "auto":
            raise ValueError("batching applies to onnx models; GGUF models always batch")
        return self

    def chat_template_source(self) -> str | None:
        """The override template text, reading it from a file when it names one."""
        if self.chat_template is None:
            return None
        if self.chat_template.endswith(".jinja") and "\n" not in self.chat_template:
            return Path(self.chat_template).read_text(encoding="utf-8")
        return self.chat_template


class PoolConfig(BaseModel):
    """Server-wide limits on loaded models."""

    model_config = ConfigDict(extra="forbid")

    max_loaded_models: int | None = Field(
        default=None,
        ge=1,
        description="Most models loaded at once; unset: no limit. Least recently used idle "
        "models are unloaded to make room.",
    )
    memory_budget: ByteSize | None = Field(
        default=None,
        description="Most resident memory (bytes, or e.g. 2GiB) all workers may use together, "
        "measured from their processes; unset: no limit.",
    )
    load_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest a model may take to load and warm up."
    )
    admission_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a request waits for busy models to become idle so that its own "
        "model can be loaded, before it gets a 503.",
    )


class ModelsFile(BaseModel):
    """The whole models.yaml."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(min_length=1, description="The models to serve.")
    pool: PoolConfig = Field(
        default_factory=PoolConfig, description="Limits on loaded models, server-wide."
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> ModelsFile:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} appears twice")
            seen.add(model.name)
        return self


class ConfigError(Exception):
    """models.yaml is missing or invalid; the message says where."""


def load_models_file(path: Path) -> ModelsFile:
    """Read and validate a models file, resolving relative paths against its directory."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"models file {path} is not valid YAML: {exc}") from exc
    try:
        models_file = ModelsFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"models file {path} is invalid:\n{exc}") from exc
    base = path.resolve().parent
    for model in models_file.models:
        if not model.path.is_absolute():
            model.path = base / model.path
        if model.chat_template and model.chat_template.endswith(".jinja"):
            template_path = Path(model.chat_template)
            if not template_path.is_absolute():
                model.chat_template = str(base / template_path)
    return models_file
