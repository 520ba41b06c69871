"""The one JSON-schema reading both engines enforce (OpenAI strict, as llama.cpp reads it)."""

from __future__ import annotations

import json
from typing import Any

from engines.base import JsonConstraint
from engines.json_schema import LARGEST_INTEGER, constraint_schema, strict_schema


def test_objects_with_properties_are_closed_at_every_depth() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "list": {"type": "array", "items": {"properties": {"c": {"type": "string"}}}},
            "either": {"anyOf": [{"type": "object", "properties": {"d": {}}}, {"type": "null"}]},
        },
        "$defs": {"X": {"type": "object", "properties": {"e": {"type": "string"}}}},
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert strict["properties"]["list"]["items"]["additionalProperties"] is False
    assert strict["properties"]["either"]["anyOf"][0]["additionalProperties"] is False
    assert strict["$defs"]["X"]["additionalProperties"] is False
    assert "additionalProperties" not in schema, "the caller's schema is not changed"


def test_what_the_schema_says_is_kept() -> None:
    schema = {"type": "object", "properties": {"a": {}}, "additionalProperties": True}
    assert strict_schema(schema)["additionalProperties"] is True
    assert strict_schema({"type": "object"}) == {"type": "object"}, "no properties: any object"
    # Members of allOf each describe part of one object; closing each would allow nothing.
    parts: dict[str, Any] = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert all("additionalProperties" not in part for part in strict_schema(parts)["allOf"])


def test_unbounded_integers_get_sixteen_digits() -> None:
    strict = strict_schema({"type": "integer", "minimum": 3})
    assert strict == {"type": "integer", "minimum": 3, "maximum": LARGEST_INTEGER}
    assert strict_schema({"type": "integer", "exclusiveMaximum": 5})["minimum"] == -LARGEST_INTEGER


def test_constraints() -> None:
    assert constraint_schema(JsonConstraint()) == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert constraint_schema(JsonConstraint(json.dumps(schema)))["additionalProperties"] is False
