"""What `slmserve convert` claims it can convert matches the pinned tools, an architecture it
cannot convert is refused before any slow step, and the builder sees configs in the layout it
reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFWriter
from transformers import Gemma3TextConfig, LlamaConfig
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

from engines import convert_architectures
from engines.convert import ConversionError, check_architecture, convert
from engines.convert_architectures import (
    BUILDER_ARCHITECTURES,
    GGUF_ARCHITECTURES,
    GGUF_READ_NOT_BUILT,
)
from engines.gguf_header import GGUFHeaderError, metadata_string
from engines.onnx_builder import normalise_config

# What the builder builds that slmserve does not serve (vision, audio, speech).
MULTIMODAL = {
    "Gemma3ForConditionalGeneration",
    "Gemma4ForConditionalGeneration",
    "Gemma4UnifiedForConditionalGeneration",
    "Lfm2AudioForConditionalGeneration",
    "Lfm2VlForConditionalGeneration",
    "Mistral3ForConditionalGeneration",
    "Phi3VForCausalLM",
    "Phi4MMForCausalLM",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
    "VideoChatFlashQwenForCausalLM",
    "WhisperForConditionalGeneration",
}


def builder_dispatch() -> set[str]:
    """The architectures the installed builder's create_model dispatches on."""
    import onnxruntime_genai.models

    source = (Path(onnxruntime_genai.models.__file__).parent / "builder.py").read_text()
    return set(re.findall(r'config\.architectures\[0\] == "(\w+)"', source))


def transformers_name(gguf_architecture: str) -> str:
    """How transformers' GGUF loader spells an architecture in its supported list."""
    renamed = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss"}
    renamed |= {"minimax-m2": "minimax_m2", "t5encoder": "t5"}
    return renamed.get(gguf_architecture, gguf_architecture)


def test_the_builder_table_is_the_installed_builders_text_decoders() -> None:
    assert builder_dispatch() - MULTIMODAL == BUILDER_ARCHITECTURES


def test_the_gguf_tables_cover_what_transformers_reads() -> None:
    read = {transformers_name(name) for name in [*GGUF_ARCHITECTURES, *GGUF_READ_NOT_BUILT]}
    assert read == set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    assert set(GGUF_ARCHITECTURES.values()) <= BUILDER_ARCHITECTURES
    assert not set(GGUF_ARCHITECTURES) & GGUF_READ_NOT_BUILT


def test_the_real_models_architectures_are_read_from_their_headers(
    default_model_path: Path, gemma_model_path: Path
) -> None:
    assert check_architecture(default_model_path) == "llama"
    assert check_architecture(gemma_model_path) == "gemma3"
    assert metadata_string(gemma_model_path, "tokenizer.chat_template") is None
    assert metadata_string(default_model_path, "tokenizer.chat_template")


def write_gguf(path: Path, architecture: str) -> Path:
    writer = GGUFWriter(path, architecture)
    writer.add_name("a test model")
    writer.add_context_length(64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("architecture", "reason"),
    [
        ("gpt2", "onnxruntime-genai's model builder does not build it"),
        ("qwen3moe", "onnxruntime-genai's model builder does not build it"),
        ("rwkv7", "transformers' GGUF loader does not read it"),
    ],
)
def test_an_unconvertible_gguf_is_refused_before_reading(
    tmp_path: Path, architecture: str, reason: str
) -> None:
    source = write_gguf(tmp_path / "model.gguf", architecture)
    progress: list[str] = []
    with pytest.raises(ConversionError) as refused:
        convert(source, tmp_path / "out", progress=progress.append)
    assert f"the {architecture!r} architecture: {reason}" in str(refused.value)
    assert "convertible GGUF architectures: gemma2, gemma3," in str(refused.value)
    assert progress == []  # nothing was read
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"not a model")
    with pytest.raises(ConversionError, match="cannot be read as a GGUF file"):
        check_architecture(tmp_path / "model.gguf")
    with pytest.raises(GGUFHeaderError, match="no GGUF header"):
        metadata_string(tmp_path / "model.gguf", "general.architecture")


def test_an_unsupported_hugging_face_folder_is_refused_before_copying(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
    with pytest.raises(ConversionError, match="does not support the BertForMaskedLM"):
        check_architecture(tmp_path)


def test_per_layer_type_rope_settings_are_flattened_for_the_builder() -> None:
    per_layer_type = {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    config: Any = Gemma3TextConfig(rope_parameters=per_layer_type)  # transformers 5's layout
    normalise_config(config)
    assert config.rope_parameters["rope_type"] == "default"
    assert config.rope_parameters["rope_theta"] == 1_000_000.0
    assert config.rope_theta == 1_000_000.0
    assert config.rope_local_base_freq == 10_000.0


def test_flat_rope_settings_keep_their_values() -> None:
    config: Any = LlamaConfig(rope_parameters={"rope_theta": 50_000.0})
    normalise_config(config)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 50_000.0}


def test_architectures_that_read_the_nested_layout_are_left_alone() -> None:
    config: Any = Gemma3TextConfig()
    config.architectures = ["Gemma4ForConditionalGeneration"]
    nested = dict(config.rope_parameters)
    normalise_config(config)
    assert config.rope_parameters == nested


def test_the_refusal_lists_what_converts() -> None:
    refusal = convert_architectures.gguf_refusal("falcon")
    assert refusal is not None
    assert refusal.endswith("gemma3, gpt-oss, lfm2, llama, mistral, nemotron, phi3, qwen2, qwen3")
    assert convert_architectures.gguf_refusal("gemma3") is None
