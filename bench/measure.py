"""Per-request timings and their summary for one system at one concurrency."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field


@dataclass
class RequestTiming:
    started: float
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0  # the server's usage count when it gives one, else the streamed tokens

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.started

    @property
    def gaps(self) -> list[float]:
        times = self.token_times
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first token (excludes queueing and prefill)."""
        if len(self.token_times) < 2:
            return None
        return (len(self.token_times) - 1) / (self.token_times[-1] - self.token_times[0])


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[position]


@dataclass
class LevelResult:
    system: str
    concurrency: int
    wall_s: float
    requests: list[RequestTiming]
    errors: int = 0

    @property
    def tokens(self) -> int:
        return sum(request.tokens for request in self.requests)

    @property
    def aggregate_tps(self) -> float:
        return self.tokens / self.wall_s

    @property
    def decode_tps(self) -> float:
        rates = [r.decode_rate for r in self.requests if r.decode_rate is not None]
        return statistics.fmean(rates) if rates else float("nan")

    def ttft(self, fraction: float) -> float:
        return percentile([r.ttft for r in self.requests if r.token_times], fraction)

    def itl(self, fraction: float) -> float:
        return percentile([gap for r in self.requests for gap in r.gaps], fraction)
