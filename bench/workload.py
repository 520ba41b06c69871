"""The benchmark workload: same prompts, same lengths, for every system."""

from __future__ import annotations

from dataclasses import dataclass

# At temperature 0 the default model writes each of these until max_tokens: equal work.
TOPICS = ["dragons", "knights", "ships", "cats", "wizards", "robots", "pirates", "forests"]
PROMPTS = [f"Write a very long story about {topic}." for topic in TOPICS]
MAX_TOKENS = 128
LONG_PROMPT_WORDS = 850  # about 1,000 tokens with the chat template


@dataclass(frozen=True)
class Level:
    """Closed loop: `clients` clients, each sending `requests_each` requests one after another."""

    clients: int
    requests_each: int

    @property
    def total(self) -> int:
        return self.clients * self.requests_each


LEVELS = (Level(1, 5), Level(4, 3), Level(8, 2))
QUICK_LEVELS = (Level(1, 2), Level(4, 1))


def prompt_for(index: int) -> str:
    return PROMPTS[index % len(PROMPTS)]


def long_prompt() -> str:
    sentence = "The river runs past the old mill and the bakery on the corner. "
    words = (sentence * (LONG_PROMPT_WORDS // 12 + 1)).split()[:LONG_PROMPT_WORDS]
    return " ".join(words) + "\nSummarise this in one word."
