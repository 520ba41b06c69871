"""End-to-end tier: the real server as a subprocess, the official openai client, real models.

Tests take a `target`: one served model behind a live server, with an independent way to count
its prompt tokens. It is parametrized by engine, so every test runs on every engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import DEFAULT_MODEL_NAME, ONNX_MODEL_NAME
from tests.e2e.server import LiveServer, run_server, write_models

E2E_CONTEXT_LENGTH = 1024

ChatMessages = list[ChatCompletionMessageParam]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class Target:
    """A model served by a live slmserve."""

    server: LiveServer
    model: str
    client: openai.OpenAI
    count_prompt_tokens: Callable[[ChatMessages], int]


def llama_cpp_prompt_counter(model_path: Path) -> Callable[[ChatMessages], int]:
    """Count prompt tokens with llama-cpp-python's own template renderer and tokenizer."""
    vocab = Llama(str(model_path), vocab_only=True, verbose=False)
    formatter = Jinja2ChatFormatter(
        template=vocab.metadata["tokenizer.chat_template"],
        eos_token=vocab.detokenize([vocab.token_eos()]).decode(),
        bos_token=vocab.detokenize([vocab.token_bos()]).decode(),
    )

    def count(messages: ChatMessages) -> int:
        plain = [dict(message) for message in messages]
        prompt = formatter(messages=plain).prompt  # type: ignore[arg-type]
        return len(vocab.tokenize(prompt.encode(), add_bos=False, special=True))

    return count


def onnx_prompt_counter(model_path: Path) -> Callable[[ChatMessages], int]:
    """Count prompt tokens with onnxruntime-genai's own template renderer and tokenizer."""
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og.Model(str(model_path)))

    def count(messages: ChatMessages) -> int:
        plain = [dict(message) for message in messages]
        prompt = tokenizer.apply_chat_template(json.dumps(plain), add_generation_prompt=True)
        return len(tokenizer.encode(prompt))

    return count


def serve_one(name: str, engine: str, path: Path, directory: Path) -> Iterator[LiveServer]:
    model = {
        "name": name,
        "engine": engine,
        "path": str(path),
        "context_length": E2E_CONTEXT_LENGTH,
        "parallel": 1,
    }
    models = write_models(directory / "models.yaml", [model])
    # Stored responses go in the test's directory, never in the user's data directory.
    data = ("--data-dir", str(directory / "data"))
    with run_server(models, directory / "server.log", extra_args=data) as server:
        yield server


@pytest.fixture(scope="session")
def gguf_server(
    default_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("gguf-server")
    yield from serve_one(DEFAULT_MODEL_NAME, "gguf", default_model_path, directory)


@pytest.fixture(scope="session")
def onnx_server(
    onnx_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("onnx-server")
    yield from serve_one(ONNX_MODEL_NAME, "onnx", onnx_model_path, directory)


def openai_client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="session", params=["gguf", "onnx"])
def target(request: pytest.FixtureRequest) -> Target:
    """The model under test, once per engine."""
    if request.param == "gguf":
        server: LiveServer = request.getfixturevalue("gguf_server")
        path: Path = request.getfixturevalue("default_model_path")
        return Target(
            server, DEFAULT_MODEL_NAME, openai_client(server), llama_cpp_prompt_counter(path)
        )
    server = request.getfixturevalue("onnx_server")
    path = request.getfixturevalue("onnx_model_path")
    return Target(server, ONNX_MODEL_NAME, openai_client(server), onnx_prompt_counter(path))
