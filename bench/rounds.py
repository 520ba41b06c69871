"""GGUF servers side by side, interleaved: slmserve, llama.cpp's own `llama-server` (the peer of
record) and llama-cpp-python's server, on the same model, slots, context and threads.

Each round starts every server in turn (A B C, A B C, ...), runs every concurrency level against
it and stops it, so a slow patch of this shared machine lands on all systems rather than on one.
Figures are the median over rounds with their spread (min-max). A client error of any kind
(a reset connection, a retry the client would need) counts as an error: the clients never retry.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import http_load
from bench.measure import LevelResult
from bench.processes import free_port, serve
from bench.workload import Level

# At least 16 requests per level (closed loop).
ROUND_LEVELS = (Level(1, 16), Level(4, 4), Level(8, 2))
QUICK_ROUND_LEVELS = (Level(1, 4), Level(4, 1))
ROUNDS = 3


@dataclass(frozen=True)
class Server:
    system: str
    command: Callable[[int], list[str]]  # port -> command line
    ready_path: str
    model: str  # the `model` field requests send


Runs = dict[tuple[str, int], list[LevelResult]]


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def interleaved(
    servers: list[Server], levels: tuple[Level, ...], rounds: int, work: Path
) -> Runs:
    runs: Runs = {}
    for round_index in range(1, rounds + 1):
        for server in servers:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log_path = work / f"{server.system.replace(' ', '_')}-{round_index}.log"
            _log(f"round {round_index}: {server.system}")
            with serve(server.command(port), f"{base}{server.ready_path}", log_path):
                await http_load.warm_up(base, server.model)
                for level in levels:
                    result = await http_load.run_level(server.system, base, server.model, level)
                    _log(
                        f"  c={level.clients}: {result.aggregate_tps:.1f} tok/s, TTFT p50 "
                        f"{1000 * result.ttft(0.5):.0f} ms, errors {result.errors}"
                    )
                    runs.setdefault((server.system, level.clients), []).append(result)
    return runs


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    middle = _median(values) * scale
    low, high = min(values) * scale, max(values) * scale
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def aggregate(runs: Runs, system: str, clients: int) -> float:
    return _median([r.aggregate_tps for r in runs.get((system, clients), [])])


def ttft_p50(runs: Runs, system: str, clients: int) -> float:
    return _median([r.ttft(0.5) for r in runs.get((system, clients), [])])


def table(runs: Runs) -> list[str]:
    lines = [
        "| system | conc. | rounds | requests/round | aggregate tok/s, median (min-max) "
        "| TTFT p50 ms, median (min-max) | ITL p50 ms, median | errors (all rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (system, clients), results in runs.items():
        lines.append(
            f"| {system} | {clients} | {len(results)} | {len(results[0].requests)} "
            f"| {_spread([r.aggregate_tps for r in results])} "
            f"| {_spread([r.ttft(0.5) for r in results], 1000, 0)} "
            f"| {1000 * _median([r.itl(0.5) for r in results]):.1f} "
            f"| {sum(r.errors for r in results)} |"
        )
    return lines


def ratios(runs: Runs, ours: str, peers: list[str]) -> list[str]:
    lines = [
        "| conc. | peer | aggregate tok/s: slmserve / peer | TTFT p50: slmserve / peer |",
        "|---:|---|---:|---:|",
    ]
    for clients in sorted({clients for _, clients in runs}):
        for peer in peers:
            if (peer, clients) not in runs or (ours, clients) not in runs:
                continue
            throughput = aggregate(runs, ours, clients) / aggregate(runs, peer, clients)
            first_token = ttft_p50(runs, ours, clients) / ttft_p50(runs, peer, clients)
            lines.append(f"| {clients} | {peer} | {throughput:.2f} | {first_token:.2f} |")
    return lines


def targets(runs: Runs, ours: str, native: str, python_peer: str) -> list[str]:
    """The issue's targets, on medians of the interleaved rounds."""
    lines = []

    def check(label: str, value: float, target: str, met: bool) -> None:
        lines.append(f"- {label}: {value:.2f} (target {target}): {'met' if met else 'NOT met'}")

    for clients in (1, 4, 8):
        if (native, clients) in runs and (ours, clients) in runs:
            value = aggregate(runs, ours, clients) / aggregate(runs, native, clients)
            check(f"c={clients} aggregate, slmserve / llama-server", value, ">= 1.0", value >= 1.0)
    for clients in (4, 8):
        if (native, clients) in runs and (ours, clients) in runs:
            value = ttft_p50(runs, ours, clients) / ttft_p50(runs, native, clients)
            check(f"c={clients} TTFT p50, slmserve / llama-server", value, "<= 1.2", value <= 1.2)
    for clients, floor in ((1, 1.1), (4, 2.5)):
        if (python_peer, clients) in runs and (ours, clients) in runs:
            value = aggregate(runs, ours, clients) / aggregate(runs, python_peer, clients)
            label = f"c={clients} aggregate, slmserve / llama-cpp-python server"
            check(label, value, f">= {floor}", value >= floor)
    return lines
