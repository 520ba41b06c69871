"""Schemathesis against the live server's own OpenAPI schema, on both real models.

Every generated request (valid and invalid) must get no 5xx, and every 4xx must be in OpenAI's
error envelope (Anthropic's on /v1/messages, Ollama's on /api/); afterwards no worker has
restarted. Every request field is fuzzed, including n, logprobs, logit_bias, response_format,
tools and tool_choice; text that JSON can carry but that is no text (lone surrogates), control
characters and broken escapes are sent in every string field by hand, since Hypothesis's text
never holds surrogates. The number of examples is bounded so this stays in `make test`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.conftest import DEFAULT_MODEL_NAME, ONNX_MODEL_NAME
from tests.e2e.server import LiveServer, run_server, write_models

EXAMPLES_PER_OPERATION = 40
CHAT_EXAMPLES = 100
CHAT = "POST /v1/chat/completions"


MODELS = (DEFAULT_MODEL_NAME, ONNX_MODEL_NAME)
# Enough choices to fuzz n, few enough that a 2-slot model answers in seconds.
MAX_FUZZED_CHOICES = 3


@pytest.fixture(scope="module")
def fuzzed_server(
    default_model_path: Path, onnx_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("fuzz")
    common = {"context_length": 256, "parallel": 2}
    models = [
        {"name": DEFAULT_MODEL_NAME, "engine": "gguf", "path": str(default_model_path), **common},
        {"name": ONNX_MODEL_NAME, "engine": "onnx", "path": str(onnx_model_path), **common},
    ]
    models_file = write_models(directory / "models.yaml", models)
    # A token cap keeps the valid generations short: the fuzzer is here for the edges.
    limits = ("--max-tokens-cap", "16", "--max-request-bytes", "65536")
    with run_server(models_file, directory / "server.log", extra_args=limits) as server:
        yield server
        cards = server.models()
        assert {name: cards[name]["restarts"] for name in MODELS} == dict.fromkeys(MODELS, 0), (
            "a fuzzed request took a worker down"
        )


def call_and_check(case: Any, statuses: list[int]) -> None:
    response = case.call(timeout=60)
    statuses.append(response.status_code)
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    if response.status_code >= 400 and case.path.startswith("/v1/messages"):
        body = response.json()  # Anthropic's envelope on Anthropic's routes
        assert set(body) == {"type", "error"}, response.text
        assert set(body["error"]) == {"type", "message"}, response.text
        assert body["error"]["message"]
    elif response.status_code >= 400 and case.path.startswith("/api/"):
        body = response.json()  # Ollama's envelope on Ollama's routes
        assert set(body) == {"error"}, response.text
        assert isinstance(body["error"], str), response.text
        assert body["error"], response.text
    elif response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, response.text
        assert set(body["error"]) == {"message", "type", "param", "code"}, response.text
        assert body["error"]["message"]


# OpenAI fields slmserve refuses on purpose (a 400): "supported" fuzzing leaves them out.
UNSUPPORTED = {"functions", "function_call", "modalities", "audio", "prediction"}


def only_supported(body: dict[str, Any]) -> None:
    for name in UNSUPPORTED:
        body.pop(name, None)
    if isinstance(body.get("n"), int):
        body["n"] = min(body["n"], MAX_FUZZED_CHOICES)
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            message.pop("tool_calls", None)
            if message.get("role") in ("tool", "function"):
                message["role"] = "user"
            if message.get("content") is None and message.get("role") != "assistant":
                message["content"] = "Hello"  # required for every role but assistant


def checker(flavour: str, model: str, statuses: list[int]) -> Callable[[Any], None]:
    def check(case: Any) -> None:
        if flavour in ("positive", "supported"):
            # Name the served model, or nearly every valid request is a plain 404.
            if isinstance(case.body, dict):
                case.body["model"] = model
                if flavour == "supported":
                    only_supported(case.body)
            if case.path_parameters and "model" in case.path_parameters:
                case.path_parameters["model"] = model
        call_and_check(case, statuses)

    return check


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("flavour", ["positive", "supported", "negative"])
def test_no_server_errors_and_every_client_error_in_the_envelope(
    fuzzed_server: LiveServer, flavour: str, model: str
) -> None:
    """positive: valid by the schema; supported: valid and within what slmserve implements
    (real generations); negative: invalid by the schema."""
    mode = GenerationMode.NEGATIVE if flavour == "negative" else GenerationMode.POSITIVE
    # Schemathesis's own pytest plugin does not run under pytest 9; its Hypothesis strategies
    # are driven directly instead, one operation at a time.
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.base_url}/openapi.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the server's own schema must be valid"
    assert {operation.label for operation in operations} >= {
        "POST /v1/chat/completions",
        "GET /v1/models",
        "GET /v1/models/{model}",
        "POST /admin/models/{model}/load",
    }
    fuzzed = []
    chat_statuses: list[int] = []
    for operation in operations:
        is_chat = operation.label == CHAT
        check = checker(flavour, model, chat_statuses if is_chat else [])
        run_examples = settings(
            max_examples=CHAT_EXAMPLES if is_chat else EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            # The same examples every run: CI stays reproducible, failures replayable.
            derandomize=True,
        )(given(case=operation.as_strategy(generation_mode=mode))(check))
        try:
            run_examples()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): only in negative mode.
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed.append(operation.label)
    assert CHAT in fuzzed
    if flavour == "supported":
        # Mostly real generations; the rest are limits (too long, over the token cap).
        assert chat_statuses.count(200) >= 20, chat_statuses


# Inside a JSON string: (bytes as sent, whether the result is still valid Unicode text).
NASTY_TEXT = [
    (rb"\ud800", False),  # lone high surrogate
    (rb"a\udfffb", False),  # lone low surrogate
    (rb"\udc00\ud800", False),  # a pair in the wrong order
    (b"\xed\xa0\x80", False),  # a surrogate encoded in UTF-8 bytes
    (b"\xff\xfe", False),  # not UTF-8 at all
    (b"\xc0\xaf", False),  # overlong encoding
    (rb"\x41", False),  # not a JSON escape
    (rb"\u12", False),  # a short escape
    (b"a\x01b", False),  # a raw control character (JSON forbids it)
    (rb"\u0000", True),  # NUL, escaped: valid text
    (rb"\u001b[31m\u0007", True),  # terminal escapes and a bell
    (rb"\ud83d\ude00", True),  # a proper surrogate pair: an emoji
]
# Where a string can go, per route; "@@" marks the spot.
TEXT_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "@@"}]}),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "@@"}]}]},
    ),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "name": "@@"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": ["@@"]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "user": "@@"}),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "description": "@@"}}],
        },
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "s",
                    "schema": {"type": "object", "properties": {"k": {"enum": ["@@"]}}},
                },
            },
        },
    ),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "@@"}),
    ("/v1/completions", {"prompt": "@@"}),
    ("/v1/completions", {"prompt": "def f(", "suffix": "@@"}),
    ("/v1/completions", {"prompt": "hi", "stop": "@@"}),
    ("/v1/embeddings", {"input": ["fine", "@@"]}),
]


@pytest.mark.parametrize("model", MODELS)
def test_text_that_is_not_text_is_a_client_error_in_every_field(
    fuzzed_server: LiveServer, model: str
) -> None:
    outcomes: dict[int, int] = {}
    with httpx.Client(base_url=fuzzed_server.base_url, timeout=60) as client:
        for path, template in TEXT_FIELDS:
            body = {"model": model, "max_tokens": 4, **template}
            if path == "/v1/embeddings":
                del body["max_tokens"]
            for payload, is_text in NASTY_TEXT:
                raw = json.dumps(body).encode().replace(b"@@", payload)
                response = client.post(
                    path, content=raw, headers={"content-type": "application/json"}
                )
                outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
                where = (path, template, payload)
                assert response.status_code < 500, (where, response.text)
                if not is_text:
                    assert response.status_code == 400, (where, response.text)
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"}, response.text
    assert outcomes.get(200, 0) > 0, outcomes
