"""Logprobs, logit bias, JSON constraints and suffixes, on both engines and real models."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from engines.base import (
    Accepted,
    Engine,
    Failed,
    Finished,
    GenerationRequest,
    JsonConstraint,
    Message,
    TokenEvent,
)
from engines.config import ModelConfig
from engines.gguf import GGUFEngine
from engines.onnx import OnnxEngine
from engines.prompting import fill_in_the_middle
from engines.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def engine(
    request: pytest.FixtureRequest, default_model_path: Path, onnx_model_path: Path
) -> Iterator[Engine]:
    loaded: Engine
    if request.param == "gguf":
        loaded = GGUFEngine(
            ModelConfig(name="g", engine="gguf", path=default_model_path, context_length=512)
        )
    else:
        loaded = OnnxEngine(
            ModelConfig(name="o", engine="onnx", path=onnx_model_path, context_length=512)
        )
    yield loaded
    loaded.close()


def generate(engine: Engine, **fields: object) -> tuple[str, list[TokenEvent], Finished]:
    request = GenerationRequest(
        "r",
        (Message("user", str(fields.pop("question", "Name a colour."))),),
        sampling=fields.pop("sampling", GREEDY),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    tokens: list[TokenEvent] = []
    text = ""
    for event in engine.generate(request):
        if isinstance(event, Failed):
            raise event.to_error()
        if isinstance(event, TokenEvent):
            tokens.append(event)
        if isinstance(event, TokenEvent | Finished):
            text += event.text
    assert isinstance(event, Finished)
    return text, tokens, event


def test_logprobs_of_greedy_tokens_are_the_best_alternatives(engine: Engine) -> None:
    text, tokens, _ = generate(engine, max_tokens=8, logprobs=3)
    assert text
    for token in tokens:
        assert token.logprob is not None
        assert token.logprob.logprob <= 0
        assert len(token.logprob.top) == 3
        best_bytes, best = token.logprob.top[0]
        # Greedy picks the model's most likely token, so it is the first alternative.
        assert best_bytes == token.logprob.token
        assert math.isclose(best, token.logprob.logprob, abs_tol=1e-4)
        assert [lp for _, lp in token.logprob.top] == sorted(
            (lp for _, lp in token.logprob.top), reverse=True
        )
    assert b"".join(t.logprob.token for t in tokens if t.logprob).decode(errors="replace")


def test_no_logprobs_unless_asked(engine: Engine) -> None:
    _, tokens, _ = generate(engine, max_tokens=3)
    assert all(token.logprob is None for token in tokens)


def test_logit_bias_steers_the_choice(engine: Engine) -> None:
    _, tokens, _ = generate(engine, max_tokens=1)
    first = tokens[0].token_id
    _, banned, _ = generate(engine, max_tokens=1, logit_bias=((first, -100.0),))
    assert banned[0].token_id != first
    _, forced, _ = generate(engine, max_tokens=2, logit_bias=((1178, 100.0),))
    assert [t.token_id for t in forced] == [1178, 1178]


def test_json_schema_output_validates(engine: Engine) -> None:
    for seed in range(5):
        text, _, finished = generate(
            engine,
            question="Give me a person as JSON.",
            max_tokens=80,
            constraint=JsonConstraint(json.dumps(PERSON)),
            sampling=SamplingParams(temperature=0.8, seed=seed),
        )
        assert finished.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


# Free-form objects from a 135M model can nest forever; this prompt gets a short one.
COLOUR_QUESTION = 'Give a JSON object with the key "colour" and a colour as its value.'


def test_json_object_output_parses(engine: Engine) -> None:
    text, _, finished = generate(
        engine, question=COLOUR_QUESTION, max_tokens=100, constraint=JsonConstraint()
    )
    assert finished.finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_bad_schemas_and_token_ids_are_refused_at_submit(engine: Engine) -> None:
    bad_schema = GenerationRequest(
        "b", (Message("user", "x"),), constraint=JsonConstraint('{"type": "objectt"}')
    )
    refused = engine.submit(bad_schema)
    assert isinstance(refused, Failed)
    assert (refused.kind, refused.param) == ("invalid_request", "response_format")
    bad_token = GenerationRequest("t", (Message("user", "x"),), logit_bias=((10**9, 1.0),))
    refused = engine.submit(bad_token)
    assert isinstance(refused, Failed)
    assert refused.param == "logit_bias"


def test_suffix_needs_fill_in_the_middle_tokens(engine: Engine) -> None:
    refused = engine.submit(GenerationRequest("s", prompt="def add(a, b):", suffix="\n"))
    assert isinstance(refused, Failed)
    assert (refused.kind, refused.param) == ("invalid_request", "suffix")


def test_fill_in_the_middle_layout() -> None:
    assert fill_in_the_middle([1, 2], [3], begin=10, before_suffix=11, middle=12) == [
        10,
        1,
        2,
        11,
        3,
        12,
    ]


# What pydantic writes for a plain model: no additionalProperties, titles, a nested $ref.
PYDANTIC_USER = {
    "$defs": {
        "Address": {
            "properties": {"city": {"title": "City", "type": "string", "maxLength": 20}},
            "required": ["city"],
            "title": "Address",
            "type": "object",
        }
    },
    "properties": {
        "name": {"title": "Name", "type": "string", "maxLength": 20},
        "age": {"title": "Age", "type": "integer"},
        "address": {"$ref": "#/$defs/Address"},
    },
    "required": ["name", "age", "address"],
    "title": "User",
    "type": "object",
}
RECURSIVE_NODE = {
    "$defs": {
        "Node": {
            "properties": {
                "value": {"type": "integer", "minimum": 0, "maximum": 9},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 1},
            },
            "required": ["value", "children"],
            "type": "object",
        }
    },
    "$ref": "#/$defs/Node",
}


def _pairs_without_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key repeats: {keys}"
    return dict(pairs)


def test_a_schema_without_additional_properties_allows_only_its_own(engine: Engine) -> None:
    """OpenAI strict semantics on both engines: listed keys only, each once, nested $refs."""
    for seed in range(4):
        text, _, finished = generate(
            engine,
            question="John, 22, lives in Paris. Give him as JSON.",
            max_tokens=80,
            constraint=JsonConstraint(json.dumps(PYDANTIC_USER)),
            sampling=SamplingParams(temperature=1.0, seed=seed),
        )
        assert finished.finish_reason == "stop", text
        document = json.loads(text, object_pairs_hook=_pairs_without_repeats)
        assert set(document) == {"name", "age", "address"}, text
        assert set(document["address"]) == {"city"}, text
        assert abs(document["age"]) < 10**16, "an unbounded integer gets llama.cpp's 16 digits"
        jsonschema.validate(document, PYDANTIC_USER)


def test_recursive_schemas_are_enforced(engine: Engine) -> None:
    text, _, finished = generate(
        engine,
        question="A tree of digits as JSON.",
        max_tokens=120,
        constraint=JsonConstraint(json.dumps(RECURSIVE_NODE)),
    )
    assert text.startswith("{"), text
    if finished.finish_reason == "stop":
        jsonschema.validate(json.loads(text), RECURSIVE_NODE)


def test_tools_reach_the_prompt(engine: Engine) -> None:
    """The tool definitions (native or the fallback instruction) are rendered on both engines."""
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    plain = GenerationRequest("p", (Message("user", "Weather in Paris?"),), max_tokens=1)
    with_tools = GenerationRequest(
        "t", (Message("user", "Weather in Paris?"),), max_tokens=1, tools=(tool,)
    )
    accepted = [engine.submit(request) for request in (plain, with_tools)]
    for request in (plain, with_tools):
        engine.cancel(request.request_id)
    assert all(isinstance(a, Accepted) for a in accepted), accepted
    plain_tokens, tool_tokens = (a.prompt_tokens for a in accepted if isinstance(a, Accepted))
    assert tool_tokens > plain_tokens + 20


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("messages", GenerationRequest("u", (Message("user", "hi \ud800 there"),))),
        ("prompt", GenerationRequest("p", prompt="hi \udfff")),
    ],
)
def test_text_that_is_not_unicode_is_refused_not_raised(
    engine: Engine, field: str, request_: GenerationRequest
) -> None:
    refused = engine.submit(request_)
    assert isinstance(refused, Failed)
    assert (refused.kind, refused.param) == ("invalid_request", field)
