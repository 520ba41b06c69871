"""Convert a GGUF file or a Hugging Face folder into an ONNX Runtime GenAI model folder.

Two stages: transformers' GGUF loader turns the GGUF into a dense Hugging Face folder (skipped
for an HF folder), then onnxruntime-genai's model builder writes the ONNX model for a provider
and precision. The heavy tools (torch, transformers, gguf, onnx, onnx_ir, accelerate) come from
the optional `convert` extra and are only imported here. The builder runs as a subprocess: it
is noisy and may exit the interpreter on errors, and its log is kept for the error message.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from engines.convert_architectures import builder_refusal, gguf_refusal
from engines.gguf_header import GGUFHeaderError, metadata_string

Precision = Literal["int4", "fp16", "fp32"]
TargetProvider = Literal["cpu", "cuda", "dml"]

# module to import -> what pip installs it
CONVERT_REQUIREMENTS = {
    "torch": "torch==2.13.0",
    "transformers": "transformers>=5,<6",
    "gguf": "gguf",
    "accelerate": "accelerate",
    "onnx": "onnx",
    "onnx_ir": "onnx_ir",
    "onnxruntime_genai": "onnxruntime-genai==0.18.0",
}
CONVERT_INSTALL = "pip install 'slmserve[convert,cpu]'"
# What the onnxruntime-genai builder can produce, per precision.
BUILDABLE_PROVIDERS: dict[str, tuple[str, ...]] = {
    "int4": ("cpu", "cuda", "dml"),
    "fp16": ("cuda", "dml"),
    "fp32": ("cpu", "cuda"),
}
MARKER = "slmserve-convert.json"


class ConversionError(Exception):
    """The conversion cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class ConversionRecord:
    """Written next to the model: what it was built from, so a rebuild can be skipped."""

    source: str
    source_size: int
    source_mtime_ns: int
    precision: str
    provider: str


Progress = Callable[[str], None]


def missing_requirements() -> list[str]:
    return [
        requirement
        for module, requirement in CONVERT_REQUIREMENTS.items()
        if importlib.util.find_spec(module) is None
    ]


def _record_for(source: Path, precision: str, provider: str) -> ConversionRecord:
    stat = source.stat()
    if source.is_dir():
        files = [child.stat() for child in source.rglob("*") if child.is_file()]
        size = sum(f.st_size for f in files)
        mtime = max((f.st_mtime_ns for f in files), default=stat.st_mtime_ns)
    else:
        size, mtime = stat.st_size, stat.st_mtime_ns
    return ConversionRecord(str(source.resolve()), size, mtime, precision, provider)


def is_up_to_date(source: Path, output: Path, precision: str, provider: str) -> bool:
    marker = output / MARKER
    if not marker.is_file() or not (output / "genai_config.json").is_file():
        return False
    try:
        recorded = ConversionRecord(**json.loads(marker.read_text()))
    except (TypeError, ValueError):
        return False
    return recorded == _record_for(source, precision, provider)


def check_architecture(source: Path) -> str:
    """The source's architecture, read cheaply; ConversionError when it cannot be converted,
    so that a hopeless conversion stops before the minute-long reading step."""
    if source.is_file():
        try:
            architecture = metadata_string(source, "general.architecture")
        except (GGUFHeaderError, OSError) as error:
            raise ConversionError(f"{source} cannot be read as a GGUF file: {error}") from error
        if architecture is None:
            raise ConversionError(f"{source} names no general.architecture in its metadata")
        if refusal := gguf_refusal(architecture):
            raise ConversionError(refusal)
        return architecture
    config = _read_config(source / "config.json")
    architecture = _architecture_name(config)
    if refusal := builder_refusal(architecture, config.get("model_type")):
        raise ConversionError(refusal)
    return architecture


def _read_config(config_path: Path) -> dict[str, Any]:
    if not config_path.is_file():
        raise ConversionError(
            f"{config_path.parent} has no config.json: not a Hugging Face model folder"
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ConversionError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path} is not a JSON object")
    return config


def _architecture_name(config: dict[str, Any]) -> str:
    architectures = config.get("architectures")
    if architectures:
        return str(architectures[0])
    model_type = str(config.get("model_type", ""))
    if not model_type:
        raise ConversionError("config.json names neither architectures nor model_type")
    return model_type.capitalize() + "ForCausalLM"


def _gguf_to_hf(gguf_file: Path, hf_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent,
            gguf_file=gguf_file.name,
            # Unpacked to dense weights: the ONNX builder quantizes them again for its target.
            quantization_config=GgufConfig(dequantize=True),
        )
    except (ValueError, KeyError, NotImplementedError) as error:
        raise ConversionError(
            f"transformers cannot read {gguf_file.name}: {error} "
            "(unsupported GGUF architecture or file)"
        ) from error
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)


def _prepare_hf_config(hf_dir: Path) -> None:
    """The builder refuses "quantized" configs and dispatches on `architectures`."""
    config_path = hf_dir / "config.json"
    config = _read_config(config_path)
    config.pop("quantization_config", None)
    config["architectures"] = [_architecture_name(config)]
    if refusal := builder_refusal(config["architectures"][0], config.get("model_type")):
        raise ConversionError(refusal)  # transformers read the GGUF as something else
    config_path.write_text(json.dumps(config, indent=2))


def _run_builder(
    hf_dir: Path, output: Path, precision: str, provider: str, cache: Path, log_path: Path
) -> None:
    # onnxruntime-genai's builder, on configs normalised to the layout it reads.
    command = [sys.executable, "-m", "engines.onnx_builder"]
    command += ["-i", str(hf_dir), "-o", str(output), "-p", precision, "-e", provider]
    command += ["-c", str(cache)]
    with log_path.open("w") as log_file:
        result = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, check=False)
    if result.returncode == 0:
        return
    lines = log_path.read_text(errors="replace").splitlines()
    if any("not currently supported" in line for line in lines[-5:]):
        config = json.loads((hf_dir / "config.json").read_text())
        architecture = ", ".join(config.get("architectures", [])) or "unknown"
        raise ConversionError(
            f"the ONNX model builder does not support the {architecture} architecture "
            f"(model_type {config.get('model_type')!r}); see onnxruntime-genai's list of "
            "supported models"
        )
    tail = "\n".join(lines[-15:])
    raise ConversionError(f"the ONNX model builder failed (full log: {log_path}):\n{tail}")


def convert(
    source: Path,
    output: Path,
    *,
    precision: Precision = "int4",
    provider: TargetProvider = "cpu",
    force: bool = False,
    progress: Progress = print,
) -> Path:
    """Build `output` from `source` (a .gguf file or an HF folder); returns the output folder."""
    if not source.exists():
        raise ConversionError(f"{source} does not exist")
    if provider not in BUILDABLE_PROVIDERS[precision]:
        choices = " or ".join(BUILDABLE_PROVIDERS[precision])
        raise ConversionError(f"{precision} models can be built for {choices}, not {provider}")
    if not force and is_up_to_date(source, output, precision, provider):
        progress(f"{output} is up to date with {source.name}; nothing to do")
        return output
    if missing := missing_requirements():
        raise ConversionError(
            f"conversion needs {', '.join(missing)}; install them with: {CONVERT_INSTALL}"
        )
    architecture = check_architecture(source)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slmserve-convert-") as scratch:
        work = Path(scratch)
        if source.is_file():
            progress(f"[1/3] reading {source.name} ({architecture}) with transformers' GGUF loader")
            hf_dir = work / "hf"
            _gguf_to_hf(source, hf_dir)
        else:
            progress(f"[1/3] using the Hugging Face folder {source} ({architecture})")
            hf_dir = work / "hf"
            shutil.copytree(source, hf_dir)
        _prepare_hf_config(hf_dir)
        progress(
            f"[2/3] building the ONNX model ({precision}, {provider}) "
            f"after {time.monotonic() - started:.0f}s"
        )
        staging = work / "onnx"
        log_path = Path(tempfile.gettempdir()) / f"slmserve-convert-{output.name}.log"
        _run_builder(hf_dir, staging, precision, provider, work / "cache", log_path)
        record = _record_for(source, precision, provider)
        (staging / MARKER).write_text(json.dumps(asdict(record), indent=2))
        if output.exists():
            shutil.rmtree(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), output)
    progress(f"[3/3] wrote {output} in {time.monotonic() - started:.0f}s")
    return output
