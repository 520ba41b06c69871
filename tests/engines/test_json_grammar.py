"""Integer ranges and JSON schema grammars for llama.cpp."""

from __future__ import annotations

import json
import re

import llama_cpp
import pytest

from engines.errors import InvalidRequestError
from engines.json_grammar import IntegerRange, integer_bounds, json_schema_grammar


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 0), (0, 9), (0, 120), (7, 7), (13, 2047), (-40, 40), (-1000, -3), (-9, 0), (99, 100)],
)
def test_a_range_matches_exactly_its_integers(low: int, high: int) -> None:
    pattern = re.compile(IntegerRange(low, high).regex())
    for value in range(low - 1200, high + 1200):
        assert bool(pattern.match(str(value))) == (low <= value <= high), value
    for written in ("007", "-0", "01", "+5", "", "-"):
        assert not pattern.match(written)


def test_ranges_stay_compact() -> None:
    assert IntegerRange(0, 120).gbnf() == '[0-9] | [1-9] [0-9] | "1" [0-1] [0-9] | "1" "2" "0"'
    assert len(IntegerRange(-(10**15), 10**15).alternatives()) < 80


def test_bounds_from_schemas() -> None:
    assert integer_bounds({"minimum": 0, "maximum": 120}) == IntegerRange(0, 120)
    assert integer_bounds({"exclusiveMinimum": 0, "exclusiveMaximum": 10}) == IntegerRange(1, 9)
    assert integer_bounds({"minimum": 0, "exclusiveMinimum": True}) == IntegerRange(1, 10**16 - 1)
    with pytest.raises(InvalidRequestError, match="allows no integer"):
        integer_bounds({"minimum": 5, "maximum": 4})


def test_schema_grammars_compile_in_llama_cpp(default_model_path: object) -> None:
    from pathlib import Path

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(default_model_path).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "delta": {"type": "integer", "exclusiveMinimum": -5},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}},
        },
        "required": ["age"],
    }
    grammar = json_schema_grammar(json.dumps(schema))
    assert "age-integer" in grammar
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler
    llama_cpp.llama_sampler_free(sampler)
    llama_cpp.llama_model_free(model)
    assert Path(str(default_model_path)).exists()


def test_unusable_schemas_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequestError):
        json_schema_grammar("{not json")
