"""`slmserve convert` for real: a tiny Llama built here goes through the same two stages as the
default model, and the result answers a chat request."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engines import convert as convert_module
from engines.base import Finished, GenerationRequest, Message
from engines.config import ModelConfig
from engines.convert import ConversionError, convert, is_up_to_date
from engines.onnx import OnnxEngine
from engines.sampling import SamplingParams
from tests.conftest import DEFAULT_MODEL_PATH, REPO


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory, onnx_model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    # SmolLM2's tokenizer and chat template, so the result is a chat model.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(onnx_model_path / name, folder / name)
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_convert_a_hugging_face_folder_and_chat_with_it(
    tiny_hf_model: Path, tmp_path: Path
) -> None:
    output = tmp_path / "tiny-onnx"
    result = run_cli(str(tiny_hf_model), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "[1/3]" in result.stderr
    assert "[3/3] wrote" in result.stderr
    assert (output / "genai_config.json").is_file()
    assert (output / "model.onnx").is_file()
    assert is_up_to_date(tiny_hf_model, output, "int4", "cpu")

    again = run_cli(str(tiny_hf_model), "--output", str(output))
    assert again.returncode == 0
    assert "up to date" in again.stderr

    engine = OnnxEngine(ModelConfig(name="tiny", engine="onnx", path=output))
    request = GenerationRequest(
        "r", (Message("user", "Hello!"),), max_tokens=5, sampling=SamplingParams(temperature=0)
    )
    finished = list(engine.generate(request))[-1]
    assert isinstance(finished, Finished)
    assert finished.prompt_tokens > 5
    assert finished.finish_reason in ("stop", "length")


def test_the_default_onnx_model_was_built_from_the_default_gguf(onnx_model_path: Path) -> None:
    assert is_up_to_date(DEFAULT_MODEL_PATH, onnx_model_path, "int4", "cpu")


def test_unsupported_architecture_is_named(tiny_hf_model: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(tiny_hf_model, odd)
    config = (odd / "config.json").read_text()
    (odd / "config.json").write_text(
        config.replace('"LlamaForCausalLM"', '"GPT2LMHeadModel"').replace(
            '"model_type": "llama"', '"model_type": "gpt2"'
        )
    )
    result = run_cli(str(odd), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "does not support the GPT2LMHeadModel architecture" in result.stderr


def test_missing_optional_dependencies_give_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tiny_hf_model: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(convert_module, "missing_requirements", lambda: ["torch==2.13.0"])
    with pytest.raises(ConversionError, match=r"pip install 'slmserve\[convert,cpu\]'"):
        convert(tiny_hf_model, tmp_path / "out", progress=lambda line: None)


def test_impossible_precision_and_provider_pairs_are_refused(
    tiny_hf_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConversionError, match="fp16 models can be built for cuda or dml"):
        convert(tiny_hf_model, tmp_path / "o", precision="fp16", provider="cpu")
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "missing.gguf", tmp_path / "o")


# Tiny random models of each architecture the README's conversion report calls tested: the
# builder stage (and the config normalisation it needs) runs for real on each, and the result
# loads and generates. Sliding windows are small so the tests stay small too.
TINY_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
TINY_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "MistralForCausalLM": ("MistralConfig", {"sliding_window": None}),
    "Qwen2ForCausalLM": ("Qwen2Config", {}),
    "Qwen3ForCausalLM": ("Qwen3Config", {"head_dim": 16}),
    "Phi3ForCausalLM": ("Phi3Config", {"original_max_position_embeddings": 512}),
    "Gemma2ForCausalLM": ("Gemma2Config", {"head_dim": 16, "sliding_window": 32}),
    # transformers 5 writes Gemma 3's RoPE settings per layer type (engines/onnx_builder.py).
    "Gemma3ForCausalLM": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 32}),
}


@pytest.mark.parametrize("architecture", sorted(TINY_ARCHITECTURES))
def test_each_reported_architecture_converts_loads_and_generates(
    architecture: str, onnx_model_path: Path, tmp_path: Path
) -> None:
    import transformers

    config_name, fields = TINY_ARCHITECTURES[architecture]
    config = getattr(transformers, config_name)(**{**TINY_SHAPE, **fields})
    config.architectures = [architecture]
    torch.manual_seed(0)
    source = tmp_path / "hf"
    getattr(transformers, architecture)(config).save_pretrained(source)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(onnx_model_path / name, source / name)
    output = convert(source, tmp_path / "onnx", progress=lambda line: None)
    engine = OnnxEngine(ModelConfig(name="tiny", engine="onnx", path=output))
    request = GenerationRequest(
        "r", prompt="Once upon a time", max_tokens=3, sampling=SamplingParams(temperature=0)
    )
    finished = list(engine.generate(request))[-1]
    assert isinstance(finished, Finished)
    assert finished.completion_tokens + (finished.finish_reason == "stop") >= 1
    engine.close()
