"""What Ollama's model listing and /api/show tell about a configured model, read from its files.

Best effort and cheap: a GGUF file's header (metadata and tensor shapes, never the weights), an
ONNX GenAI folder's genai_config.json, chat template and slmserve-convert.json (which names the
GGUF it was converted from, whose facts it shares). Read once per file version (path, size,
modification time) and kept; a missing or unreadable file gives empty facts, never an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from engines.config import ModelConfig

log = logging.getLogger("slmserve.ollama")

# llama.cpp's LLAMA_FTYPE values (general.file_type): the quantization Ollama reports.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}  # fmt: skip

# GGUF value types: struct format of the fixed-size ones.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ModelFacts:
    """What is known about a model's files."""

    size: int = 0
    modified_at: float | None = None  # unix time
    digest: str = ""
    family: str | None = None
    parameter_count: int | None = None
    size_label: str | None = None  # the model's own ("135M"), preferred to a computed one
    quantization: str | None = None
    context_length: int | None = None  # what the model was trained for
    template: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # Ollama's model_info

    @property
    def parameter_size(self) -> str | None:
        count = self.parameter_count
        if self.size_label:
            return self.size_label
        if count is None:
            return None
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if count >= scale:
                return f"{count / scale:.1f}".removesuffix(".0") + unit
        return str(count)


def iso_time(unix: float) -> str:
    """A time as Ollama writes it: RFC 3339 in UTC, with fractions of a second."""
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


# -- GGUF ----------------------------------------------------------------------------------


def _read(file: IO[bytes], fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = file.read(size)
    if len(data) != size:
        raise ValueError("the file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(file: IO[bytes]) -> str:
    length = _read(file, "<Q")
    return file.read(length).decode("utf-8", "replace")


def _value(file: IO[bytes], kind: int) -> Any:
    """A value; arrays are skipped (None): tokenizer vocabularies are large and say little."""
    if kind == _STRING:
        return _string(file)
    if kind == _ARRAY:
        item_kind, count = _read(file, "<I"), _read(file, "<Q")
        if item_kind in _SCALARS:
            file.seek(struct.calcsize(_SCALARS[item_kind]) * count, 1)
        else:
            for _ in range(count):
                _value(file, item_kind)
        return None
    return _read(file, _SCALARS[kind])


def read_gguf_header(path: Path) -> tuple[dict[str, Any], int]:
    """A GGUF file's metadata (scalars and strings) and its parameter count (from the tensor
    shapes), reading the header only."""
    with path.open("rb", buffering=1 << 16) as file:
        if file.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = _read(file, "<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        tensors, pairs = _read(file, "<Q"), _read(file, "<Q")
        metadata: dict[str, Any] = {}
        for _ in range(pairs):
            key = _string(file)
            value = _value(file, _read(file, "<I"))
            if value is not None:
                metadata[key] = value
        parameters = 0
        for _ in range(tensors):
            _string(file)
            dims = [_read(file, "<Q") for _ in range(_read(file, "<I"))]
            file.seek(12, 1)  # type (u32), offset (u64)
            parameters += functools.reduce(lambda a, b: a * b, dims, 1)
    return metadata, parameters


def _gguf_facts(path: Path) -> dict[str, Any]:
    metadata, parameters = read_gguf_header(path)
    architecture = metadata.get("general.architecture")
    file_type = metadata.get("general.file_type")
    context = metadata.get(f"{architecture}.context_length")
    info = {key: value for key, value in metadata.items() if key != "tokenizer.chat_template"}
    info["general.parameter_count"] = parameters
    return {
        "family": architecture,
        "parameter_count": parameters or None,
        "size_label": metadata.get("general.size_label"),
        "quantization": _FILE_TYPES.get(file_type) if isinstance(file_type, int) else None,
        "context_length": context if isinstance(context, int) else None,
        "template": metadata.get("tokenizer.chat_template"),
        "info": info,
    }


# -- ONNX GenAI ----------------------------------------------------------------------------


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _onnx_facts(folder: Path) -> dict[str, Any]:
    model = _json(folder / "genai_config.json").get("model", {})
    decoder = model.get("decoder", {})
    family = model.get("type")
    info: dict[str, Any] = {"general.architecture": family}
    for key, ollama_key in (
        ("context_length", "context_length"),
        ("vocab_size", "vocab_size"),
    ):
        if key in model:
            info[f"{family}.{ollama_key}"] = model[key]
    for key, ollama_key in (
        ("hidden_size", "embedding_length"),
        ("num_hidden_layers", "block_count"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
    ):
        if key in decoder:
            info[f"{family}.{ollama_key}"] = decoder[key]
    facts: dict[str, Any] = {"family": family, "context_length": model.get("context_length")}
    # A model slmserve converted from a GGUF: that file's parameter count.
    converted = _json(folder / "slmserve-convert.json")
    if precision := converted.get("precision"):
        facts["quantization"] = str(precision).upper()
    source = Path(str(converted.get("source", "")))
    if source.suffix == ".gguf" and source.is_file():
        with_source = _gguf_facts(source)
        facts["parameter_count"] = with_source["parameter_count"]
        facts["size_label"] = with_source["size_label"]
        info["general.parameter_count"] = with_source["parameter_count"]
    template = folder / "chat_template.jinja"
    if template.is_file():
        facts["template"] = template.read_text(encoding="utf-8")
    else:
        facts["template"] = _json(folder / "tokenizer_config.json").get("chat_template")
    facts["info"] = info
    return facts


# -- facts ---------------------------------------------------------------------------------


def _stat(path: Path) -> tuple[int, int]:
    """Size and latest modification (ns) of a file, or of every file in a folder."""
    if path.is_dir():
        files = [child.stat() for child in path.rglob("*") if child.is_file()]
        return sum(s.st_size for s in files), max((s.st_mtime_ns for s in files), default=0)
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _facts(engine: str, path: Path, size: int, mtime_ns: int) -> ModelFacts:
    digest = hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()
    read: dict[str, Any] = {}
    try:
        read = _gguf_facts(path) if engine == "gguf" else _onnx_facts(path)
    except (OSError, ValueError, KeyError, struct.error) as error:
        log.warning("cannot read the facts of %s: %s", path, error)
    return ModelFacts(size=size, modified_at=mtime_ns / 1e9, digest=digest, **read)


def model_facts(config: ModelConfig) -> ModelFacts:
    """The facts of a configured model's files (empty when they cannot be read). Blocking:
    call it in a thread."""
    try:
        size, mtime_ns = _stat(config.path)
    except OSError:
        digest = hashlib.sha256(str(config.path).encode()).hexdigest()
        return ModelFacts(digest=digest)
    facts = _facts(config.engine, config.path, size, mtime_ns)
    if template := config.chat_template_source():
        facts = ModelFacts(**{**facts.__dict__, "template": template})
    return facts
