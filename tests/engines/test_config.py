"""models.yaml loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.config import ConfigError, load_models_file
from engines.sampling import SamplingParams


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_paths_resolve_against_the_file(tmp_path: Path) -> None:
    config = load_models_file(
        write(tmp_path, "models:\n  - {name: m, engine: gguf, path: sub/m.gguf}\n")
    )
    [model] = config.models
    assert model.path == tmp_path / "sub" / "m.gguf"
    # parallel auto: the default context (8192 at most) gives two slots.
    assert (model.provider, model.parallel, model.preload) == ("auto", 2, True)


@pytest.mark.parametrize(
    ("fields", "parallel"),
    [
        ("engine: gguf, context_length: 4096", 4),
        ("engine: gguf, context_length: 2048", 8),
        ("engine: gguf, context_length: 256", 8),
        ("engine: gguf, context_length: 16384", 1),
        ("engine: onnx, context_length: 1024", 4),
        ("engine: gguf, context_length: 4096, parallel: auto", 4),
        ("engine: gguf, context_length: 4096, parallel: 3", 3),
    ],
)
def test_parallel_auto_sizes_slots_from_the_context(
    tmp_path: Path, fields: str, parallel: int
) -> None:
    config = load_models_file(write(tmp_path, f"models:\n  - {{name: m, path: m, {fields}}}\n"))
    assert config.models[0].parallel == parallel


def test_defaults_become_sampling_params(tmp_path: Path) -> None:
    config = load_models_file(
        write(
            tmp_path,
            "models:\n  - name: m\n    engine: gguf\n    path: /m.gguf\n"
            "    defaults: {temperature: 0.2, max_tokens: 64}\n",
        )
    )
    defaults = config.models[0].defaults
    assert defaults.max_tokens == 64
    assert defaults.sampling_params() == SamplingParams(temperature=0.2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []\n", "at least 1"),
        ("models:\n  - {name: m, engine: tf, path: x}\n", "engine"),
        ("models:\n  - {name: m, engine: gguf, path: x, parallel: 0}\n", "parallel"),
        ("models:\n  - {name: m, engine: gguf, path: x, colour: red}\n", "colour"),
        (
            "models:\n  - {name: m, engine: gguf, path: x}\n  - {name: m, engine: gguf, path: y}\n",
            "appears twice",
        ),
        ("models: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_files_say_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_models_file(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_models_file(tmp_path / "nope.yaml")


def test_shipped_example_is_valid() -> None:
    config = load_models_file(Path(__file__).parents[2] / "models.yaml")
    assert [m.engine for m in config.models] == ["gguf", "onnx"]
