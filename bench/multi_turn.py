"""Multi-turn prefix reuse: time to first token of a conversation's second turn against its
first, on the engine itself (in-process, no server in between).

Each round is a new conversation: a ~1,000-token first turn (nothing cached shares more than
the system prompt with it), then a second turn that sends the whole conversation again with
one more question, as chat clients do. With prefix reuse the second turn prefills only its new
tokens.

Usage: python -m bench.multi_turn  (the ONNX model with bench/run.py's settings)
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from bench import report
from bench.workload import long_prompt
from engines.base import Engine, Failed, Finished, GenerationRequest, Message, TokenEvent
from engines.sampling import SamplingParams

ROUNDS = 5
MAX_TOKENS = 16
FOLLOW_UP = "Now explain your answer in one sentence."
TARGET_RATIO = 0.3


@dataclass
class Turn:
    """One turn of every round."""

    ttft_s: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)

    def row(self, name: str) -> str:
        ms = [1000 * t for t in self.ttft_s]
        return (
            f"| {name} | {statistics.median(self.prompt_tokens):.0f} "
            f"| {statistics.median(self.cached_tokens):.0f} | {statistics.median(ms):.0f} "
            f"| {min(ms):.0f}-{max(ms):.0f} |"
        )


@dataclass
class MultiTurnResult:
    first: Turn = field(default_factory=Turn)
    second: Turn = field(default_factory=Turn)

    @property
    def ratio(self) -> float:
        """Median second-turn TTFT over median first-turn TTFT."""
        return statistics.median(self.second.ttft_s) / statistics.median(self.first.ttft_s)

    def check(self) -> str:
        return report.check(
            "second-turn TTFT / first-turn TTFT (ONNX, ~1,000-token conversation)",
            self.ratio,
            f"<= {TARGET_RATIO}",
            self.ratio <= TARGET_RATIO,
        )

    def table(self) -> list[str]:
        return [
            "| turn | prompt tokens | cached tokens | TTFT median ms | TTFT min-max ms |",
            "|---|---:|---:|---:|---:|",
            self.first.row("1 (new conversation)"),
            self.second.row("2 (continues turn 1)"),
        ]


def _timed(engine: Engine, request: GenerationRequest, turn: Turn) -> str:
    """Run one request; record its time to first token and its usage; return its text."""
    text, first_token_at = "", None
    started = time.perf_counter()
    for event in engine.generate(request):
        if isinstance(event, Failed):
            raise event.to_error()
        if isinstance(event, TokenEvent) and first_token_at is None:
            first_token_at = time.perf_counter()
        if isinstance(event, TokenEvent | Finished):
            text += event.text
        if isinstance(event, Finished):
            turn.ttft_s.append((first_token_at or time.perf_counter()) - started)
            turn.prompt_tokens.append(event.prompt_tokens)
            turn.cached_tokens.append(event.cached_prompt_tokens)
    return text


def measure(engine: Engine, rounds: int = ROUNDS) -> MultiTurnResult:
    result = MultiTurnResult()
    greedy = SamplingParams(temperature=0.0)
    for index in range(rounds):
        # A different opening per round: a new conversation, not a continuation of the last.
        question = Message("user", f"Conversation {index}. {long_prompt()}")
        first = GenerationRequest(f"{index}-1", (question,), max_tokens=MAX_TOKENS, sampling=greedy)
        answer = _timed(engine, first, result.first)
        conversation = (question, Message("assistant", answer), Message("user", FOLLOW_UP))
        second = GenerationRequest(
            f"{index}-2", conversation, max_tokens=MAX_TOKENS, sampling=greedy
        )
        _timed(engine, second, result.second)
    return result


def main() -> int:
    from bench.run import model_configs, run_multi_turn  # here: bench.run imports this module

    result = run_multi_turn(model_configs()[1])
    print("\n".join([*result.table(), "", result.check()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
