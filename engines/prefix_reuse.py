"""When a request may reuse the KV cache another request left behind: shared by both engines.

A multi-turn chat sends the whole conversation again, so the new prompt starts with the tokens
the previous turn's cache holds (its prompt and most of its answer). Both engines keep such
caches after a request ends and give them to a request that continues them.
"""

from __future__ import annotations

from collections.abc import Sequence

# A request "continues" a cache when the shared prefix keeps this much of it. Lower, and a new
# conversation that only shares the system prompt would take (and cut down) another's cache.
CONTINUATION_SHARE = 0.75


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading tokens the two sequences share."""
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def continues(cached_tokens: int, shared: int) -> bool:
    """Whether a prompt sharing `shared` tokens with a cache of `cached_tokens` continues it."""
    return cached_tokens > 0 and shared >= CONTINUATION_SHARE * cached_tokens
