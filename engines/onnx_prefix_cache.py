"""Idle og generators kept after their requests end, so that a conversation that continues
reuses its KV cache (multi-turn prefix reuse on ONNX models).

onnxruntime-genai has no cache shared between generators: each `og.Generator` owns a KV cache
of `max_length` positions, allocated (and zeroed) when it is made. What it does have is
`rewind_to(n)`: keep the first n positions, then `append_tokens` the rest. So a finished
request's generator is parked here with the tokens its cache holds; a request whose prompt
continues them takes it, rewinds it to the shared prefix and prefills only what is new.

What a parked generator cannot change (measured on onnxruntime-genai 0.18):
- `max_length`: its KV buffer has that many positions; a request must fit in it.
- greedy or sampling: chosen when it is made. Temperature, top_p, top_k and the repetition
  penalty are read from its GeneratorParams at every step, but changing them there is nothing
  og documents (changing max_length that way breaks the generator), so a request takes only a
  generator made with the same options.
- its random generator: seeded once at creation and advanced by every sample, so a seeded
  request would not repeat its text on a reused one; seeded generators are never parked.
- its JSON-schema guidance: constrained generators are never parked either.

Memory stays bounded: at most `max_count` parked generators, and running plus parked
generators hold at most `max_positions` KV positions together (the scheduler asks for room
before it makes a generator); the least recently used go first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.prefix_reuse import common_prefix_length, continues

# og's search options without max_length, sorted: what must match for a generator to be reused.
SearchOptions = tuple[tuple[str, float | int | bool], ...]

# Room made for a conversation to grow when its generator may be parked: its next turn adds the
# answer and a new user message. Half again what the request needs (a long conversation makes
# a new generator only every few turns), at least this many positions. Zeroing costs ~0.03 ms
# per position here, so the floor is small.
MIN_GROWTH_POSITIONS = 256


def search_options_key(options: dict[str, float | int | bool]) -> SearchOptions:
    return tuple(sorted((name, value) for name, value in options.items() if name != "max_length"))


def max_length_with_room(needed: int, context_length: int) -> int:
    """KV positions for a generator that a conversation may continue."""
    return min(context_length, needed + max(MIN_GROWTH_POSITIONS, needed // 2))


@dataclass(slots=True)
class IdleGenerator:
    generator: Any  # og.Generator
    tokens: list[int]  # the tokens whose keys and values its cache holds, by position
    max_length: int  # KV positions it was allocated for
    options: SearchOptions


class IdleGenerators:
    """Parked generators, least recently used first."""

    def __init__(self, max_count: int, max_positions: int) -> None:
        self.max_count = max_count
        self.max_positions = max_positions
        self._idle: list[IdleGenerator] = []  # the most recently parked last

    def __len__(self) -> int:
        return len(self._idle)

    @property
    def positions(self) -> int:
        """KV positions the parked generators hold."""
        return sum(idle.max_length for idle in self._idle)

    def take(
        self, prompt: list[int], options: SearchOptions, length: int
    ) -> tuple[IdleGenerator, int] | None:
        """The parked generator `prompt` continues, removed from the cache, and how many
        tokens they share; None when none fits `length` positions with these options."""
        best: tuple[IdleGenerator, int] | None = None
        for idle in self._idle:
            if idle.options != options or idle.max_length < length:
                continue
            shared = common_prefix_length(idle.tokens, prompt)
            if continues(len(idle.tokens), shared) and (best is None or shared > best[1]):
                best = (idle, shared)
        if best is not None:
            self._idle.remove(best[0])
        return best

    def park(self, idle: IdleGenerator) -> None:
        """Keep a generator whose request ended (it was counted as running until now, so
        only the count bound can be exceeded)."""
        if not idle.tokens or self.max_count < 1:
            return
        self._idle.append(idle)
        del self._idle[: max(0, len(self._idle) - self.max_count)]

    def make_room(self, positions_in_use: int) -> None:
        """Drop the least recently used until they fit beside `positions_in_use` (running
        generators and the one about to be made)."""
        while self._idle and self.positions + positions_in_use > self.max_positions:
            del self._idle[0]

    def clear(self) -> None:
        self._idle.clear()
