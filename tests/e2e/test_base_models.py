"""A model without a chat template (a base model) loads and serves raw prompts; a chat request
to it is a 400 naming the `chat_template` setting. Both engines, on copies of the default model
with their template removed (the GGUF metadata rewritten with the gguf package, the ONNX
folder's template left out)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import openai_client
from tests.e2e.server import LiveServer, run_server, write_models


def gguf_without_template(source: Path, directory: Path) -> Path:
    target = directory / "base.gguf"
    rewrite = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(source), str(target)]
    subprocess.run(
        [*rewrite, "--remove-metadata", "tokenizer.chat_template", "--force"],
        check=True,
        capture_output=True,
    )
    return target


def onnx_without_template(source: Path, directory: Path) -> Path:
    target = directory / "base-onnx"
    target.mkdir()
    for item in source.iterdir():
        if item.name == "chat_template.jinja":
            continue
        if item.name == "tokenizer_config.json":
            config = json.loads(item.read_text())
            config.pop("chat_template", None)
            (target / item.name).write_text(json.dumps(config))
        else:  # a copy: ONNX Runtime refuses weights that live outside the model folder
            shutil.copy(item, target / item.name)
    return target


@pytest.fixture(scope="module")
def base_server(
    default_model_path: Path, onnx_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("base-models")
    models = [
        {
            "name": "base-gguf",
            "engine": "gguf",
            "path": str(gguf_without_template(default_model_path, directory)),
            "context_length": 256,
        },
        {
            "name": "base-onnx",
            "engine": "onnx",
            "path": str(onnx_without_template(onnx_model_path, directory)),
            "context_length": 256,
        },
    ]
    with run_server(write_models(directory / "models.yaml", models), directory / "log") as server:
        yield server


@pytest.mark.parametrize("model", ["base-gguf", "base-onnx"])
def test_a_model_without_a_chat_template_serves_raw_prompts(
    base_server: LiveServer, model: str
) -> None:
    card = base_server.models()[model]
    assert card["state"] == "ready"
    client = openai_client(base_server)
    completion = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert completion.choices[0].text
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert refused.value.code == "chat_template_missing"
    assert refused.value.param == "messages"
    assert "chat_template" in refused.value.message
