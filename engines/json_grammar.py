"""JSON output for GGUF models: JSON schemas as GBNF grammars for llama.cpp's grammar sampler.

llama-cpp-python's SchemaConverter does the conversion; this module adds what it leaves out
and an OpenAI client expects to hold: integer `minimum`/`maximum` (and the exclusive forms).
An integer range becomes alternatives of digit classes (blocks aligned to powers of ten, merged
where they touch), so the grammar admits exactly the integers of the range and no leading zero.
The same alternatives render as a regular expression, which is how the tests check them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, SchemaConverter

from engines.errors import InvalidRequestError

# Unbounded integers get this many digits at most (as llama-cpp-python's converter does).
INTEGER_DIGITS = 16
_LARGEST = 10**INTEGER_DIGITS - 1

Span = tuple[int, int]  # a digit class: (lowest, highest) digit, or (-1, -1) for the minus sign
Alternative = tuple[Span, ...]
_MINUS: Span = (-1, -1)


def _aligned_blocks(start: int, end: int) -> list[Alternative]:
    """[start, end] (same digit count) as blocks like 12[0-9][0-9]."""
    blocks: list[Alternative] = []
    while start <= end:
        width = 0
        while start % 10 ** (width + 1) == 0 and start + 10 ** (width + 1) - 1 <= end:
            width += 1
        digits = str(start)
        fixed = [(int(d), int(d)) for d in digits[: len(digits) - width]]
        blocks.append((*fixed, *([(0, 9)] * width)))
        start += 10**width
    return blocks


def _merge(alternatives: list[Alternative]) -> list[Alternative]:
    """Join neighbours that differ in one position by adjacent digit classes."""
    merged: list[Alternative] = []
    for alternative in alternatives:
        previous = merged[-1] if merged else None
        if previous is not None and len(previous) == len(alternative):
            differing = [
                i for i, (a, b) in enumerate(zip(previous, alternative, strict=True)) if a != b
            ]
            if (
                len(differing) == 1
                and previous[differing[0]][1] + 1 == alternative[differing[0]][0]
            ):
                position = differing[0]
                span = (previous[position][0], alternative[position][1])
                merged[-1] = (*previous[:position], span, *previous[position + 1 :])
                continue
        merged.append(alternative)
    return merged


def _non_negative(low: int, high: int) -> list[Alternative]:
    alternatives: list[Alternative] = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        end = min(high, 10**digits - 1)
        if start <= end:
            alternatives += _aligned_blocks(start, end)
    return _merge(alternatives)


@dataclass(frozen=True)
class IntegerRange:
    """The integers in [low, high] as alternatives of digit classes."""

    low: int
    high: int

    def alternatives(self) -> list[Alternative]:
        result: list[Alternative] = []
        if self.low < 0:
            top = -min(self.high, -1)
            result += [(_MINUS, *alt) for alt in _non_negative(max(top, 1), -self.low)]
        if self.high >= 0:
            result += _non_negative(max(self.low, 0), self.high)
        return result

    def gbnf(self) -> str:
        def element(span: Span) -> str:
            if span == _MINUS:
                return '"-"'
            low, high = span
            return f'"{low}"' if low == high else f"[{low}-{high}]"

        return " | ".join(" ".join(map(element, alt)) for alt in self.alternatives())

    def regex(self) -> str:
        def element(span: Span) -> str:
            if span == _MINUS:
                return "-"
            low, high = span
            return str(low) if low == high else f"[{low}-{high}]"

        return "^(?:" + "|".join("".join(map(element, alt)) for alt in self.alternatives()) + ")$"


def integer_bounds(schema: dict[str, Any]) -> IntegerRange:
    """The range a JSON schema allows an integer (draft 4 and 2020 exclusive forms)."""
    low = schema.get("minimum", -_LARGEST)
    high = schema.get("maximum", _LARGEST)
    exclusive_low, exclusive_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if exclusive_low is True:
        low += 1
    elif isinstance(exclusive_low, int | float) and not isinstance(exclusive_low, bool):
        low = max(low, exclusive_low + 1)
    if exclusive_high is True:
        high -= 1
    elif isinstance(exclusive_high, int | float) and not isinstance(exclusive_high, bool):
        high = min(high, exclusive_high - 1)
    low, high = max(int(-(-low // 1)), -_LARGEST), min(int(high // 1), _LARGEST)
    if low > high:
        raise InvalidRequestError(
            f"the JSON schema allows no integer between {low} and {high}",
            param="response_format",
        )
    return IntegerRange(low, high)


_RANGE_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


class _RangeAwareConverter(SchemaConverter):
    def visit(self, schema: Any, name: str) -> str:
        if (
            isinstance(schema, dict)
            and schema.get("type") == "integer"
            and any(key in schema for key in _RANGE_KEYS)
        ):
            rule = f"({integer_bounds(schema).gbnf()}) space"
            result: str = self._add_rule(f"{name or 'root'}-integer", rule)
            return result
        visited: str = super().visit(schema, name)
        return visited


def json_object_grammar() -> str:
    """Any JSON object (response_format json_object)."""
    return JSON_GBNF


def _root_ref_as_union(schema: Any) -> Any:
    """llama-cpp-python's resolve_refs does not look past a node's `$ref`, so the `$defs` of a
    root that is itself a reference (pydantic's recursive models) stay unresolved; a one-branch
    union means the same and is walked in full."""
    if isinstance(schema, dict) and "$ref" in schema and "anyOf" not in schema:
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        return {**rest, "anyOf": [{"$ref": schema["$ref"]}]}
    return schema


def json_schema_grammar(schema: str) -> str:
    """A GBNF grammar for documents valid against `schema` (JSON text)."""
    try:
        parsed = _root_ref_as_union(json.loads(schema))
        converter = _RangeAwareConverter(
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        converter.visit(converter.resolve_refs(parsed, "schema"), "")
        grammar: str = converter.format_grammar()
    except InvalidRequestError:
        raise
    # The converter signals a schema it does not understand with AssertionError.
    except (
        AssertionError,
        ValueError,
        KeyError,
        TypeError,
        NotImplementedError,
        RecursionError,
    ) as error:
        raise InvalidRequestError(
            f"the JSON schema cannot be turned into a grammar: {error}", param="response_format"
        ) from error
    return grammar
