"""One meaning of a JSON schema for every engine: OpenAI's strict structured outputs.

llama.cpp's grammar converter and og's guidance (llguidance) read the same schema differently:
an object schema that lists `properties` but says nothing of `additionalProperties` allows only
those properties in llama.cpp (and in OpenAI's strict mode), while llguidance follows JSON Schema
to the letter and lets the model add any key, or repeat one until max_tokens. Every schema is
normalised here before an engine sees it, so both enforce the strict reading: an object with
listed properties allows only those unless it says otherwise. An object schema that lists no
properties stays any object. An integer without bounds gets llama.cpp's: at most 16 digits
(llguidance would let a sampled number run on until max_tokens).
"""

from __future__ import annotations

import json
from typing import Any

from engines.base import JsonConstraint
from engines.errors import InvalidRequestError

ANY_OBJECT: dict[str, Any] = {"type": "object"}
LARGEST_INTEGER = 10**16 - 1  # llama.cpp's JSON grammars allow 16 digits

# Keywords whose value is one subschema, a list of them, or a mapping of names to them.
_ONE_SCHEMA = (
    "items",
    "additionalProperties",
    "additionalItems",
    "unevaluatedProperties",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
)
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _is_object_schema(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return "properties" in schema and (
        kind is None or kind == "object" or (isinstance(kind, list) and "object" in kind)
    )


def strict_schema(schema: Any, *, closed: bool = True) -> Any:
    """A copy of `schema` in which every object schema with properties is closed.

    `closed=False` leaves this level open: the members of an `allOf` each describe part of one
    object, so closing each would make their conjunction unsatisfiable.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ONE_SCHEMA or key in _SCHEMA_LISTS:
            result[key] = strict_schema(value)
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            result[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key == "allOf" and isinstance(value, list):
            result[key] = [strict_schema(member, closed=False) for member in value]
        else:
            result[key] = value
    if closed and _is_object_schema(result) and "additionalProperties" not in result:
        result["additionalProperties"] = False
    if result.get("type") == "integer":
        if not any(bound in result for bound in ("minimum", "exclusiveMinimum")):
            result["minimum"] = -LARGEST_INTEGER
        if not any(bound in result for bound in ("maximum", "exclusiveMaximum")):
            result["maximum"] = LARGEST_INTEGER
    return result


def constraint_schema(constraint: JsonConstraint) -> dict[str, Any]:
    """The normalised schema a constraint enforces (any object when it names none)."""
    if constraint.schema is None:
        return dict(ANY_OBJECT)
    try:
        parsed = json.loads(constraint.schema)
    except ValueError as error:
        raise InvalidRequestError(
            f"the JSON schema is not valid JSON: {error}", param="response_format"
        ) from error
    if not isinstance(parsed, dict):
        raise InvalidRequestError("the JSON schema must be an object", param="response_format")
    normalised: dict[str, Any] = strict_schema(parsed)
    return normalised
