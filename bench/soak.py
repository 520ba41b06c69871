"""`make soak`: many mixed requests against a live server; nothing may be lost or left held.

Usage: python -m bench.soak [--requests 2000] [--concurrency 16] [--output BENCHMARKS.md]

Clients pick a model, streaming or not, and a short max_tokens at random (seeded); about 10% of
streaming clients read a few chunks and hang up. Every request ends in exactly one bucket: ok,
left on purpose, or an error by kind; a request that gets no answer at all (timeout, broken
connection) is "lost". After the run the server must hold no slot and queue nothing, and the
resident memory of the server and its workers is compared with before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

from bench.processes import free_port, serve, slmserve_command
from bench.report import machine_facts, write_section

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Say hello.",
    "Name a colour.",
    "Write a very long story about dragons.",
    "What is two plus two?",
    "Describe the sea in one sentence.",
]
REQUEST_TIMEOUT_S = 120.0
START, END = "<!-- soak:start -->", "<!-- soak:end -->"


@dataclass
class SoakReport:
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    held_slots_after: int = 0
    rss_before: int = 0
    rss_after: int = 0
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.outcomes["lost"] + self.sent - sum(self.outcomes.values())

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in self.outcomes.items() if k.startswith("error")}

    def lines(self) -> list[str]:
        rows = [f"| {kind} | {count} |" for kind, count in sorted(self.outcomes.items())]
        return [
            f"- requests sent: {self.sent} in {self.seconds:.0f} s",
            f"- requests lost (no answer): {self.lost}",
            f"- errors: {sum(self.errors.values())} {dict(self.errors) or ''}".rstrip(),
            f"- slots still held or queued afterwards: {self.held_slots_after}",
            f"- resident memory, server + workers: {self.rss_before / 2**20:.0f} MiB before, "
            f"{self.rss_after / 2**20:.0f} MiB after",
            "",
            "| outcome | requests |",
            "|---|---:|",
            *rows,
        ]


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


async def _one(client: httpx.AsyncClient, models: list[str], rng: random.Random) -> str:
    body = {
        "model": rng.choice(models),
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.randint(4, 24),
    }
    stream = rng.random() < 0.5
    hang_up = stream and rng.random() < 0.2  # half the clients stream: ~10% of all hang up
    try:
        if not stream:
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                return f"error {response.status_code} {response.json()['error']['code']}"
            return "ok non-stream"
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}
        ) as response:
            if response.status_code != 200:
                await response.aread()
                return f"error {response.status_code} {response.json()['error']['code']}"
            lines = response.aiter_lines()
            if hang_up:
                for _ in range(rng.randint(1, 4)):
                    await anext(lines)
                return "left mid-stream (on purpose)"
            last, failure = "", ""
            async for line in lines:
                if line.startswith('data: {"error"'):
                    failure = json.loads(line.removeprefix("data: "))["error"]["code"]
                if line.startswith("data: "):
                    last = line
            if last != "data: [DONE]":
                return "error stream ended without [DONE]"
            return f"error in stream {failure}" if failure else "ok stream"
    except (httpx.TimeoutException, httpx.TransportError):
        return "lost"


async def held_slots(base_url: str) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        for _ in range(50):  # cancellations land within a token; allow a moment
            cards = (await client.get("/v1/models")).json()["data"]
            held = sum(int(card["running"]) + int(card["waiting"]) for card in cards)
            if held == 0:
                return 0
            await asyncio.sleep(0.1)
        return held


async def run_soak(
    base_url: str, models: list[str], total: int, concurrency: int, seed: int = 0
) -> SoakReport:
    report = SoakReport()
    rng = random.Random(seed)
    remaining = total
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10)
    limits = httpx.Limits(max_connections=concurrency * 2)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            report.sent += 1
            report.outcomes[await _one(client, models, rng)] += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    report.seconds = time.monotonic() - started
    report.held_slots_after = await held_slots(base_url)
    return report


def soak_models() -> list[dict[str, object]]:
    common = {"context_length": 1024, "parallel": 4, "max_queue": 64}
    return [
        {
            "name": "gguf",
            "engine": "gguf",
            "path": str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            **common,
        },
        {
            "name": "onnx",
            "engine": "onnx",
            "path": str(REPO / "models/SmolLM2-135M-Instruct-onnx-int4-cpu"),
            **common,
        },
    ]


async def main(total: int, concurrency: int, output: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="slmserve-soak-") as scratch:
        models_file = Path(scratch) / "models.yaml"
        models_file.write_text(yaml.safe_dump({"models": soak_models()}))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = slmserve_command(models_file, port)
        with serve(command, f"{base}/ready", Path(scratch) / "server.log"):
            server_pid = next(
                p.pid
                for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and f"--port {port}" in " ".join(p.info["cmdline"])
            )
            rss_before = tree_rss(server_pid)
            report = await run_soak(base, ["gguf", "onnx"], total, concurrency)
            report.rss_before, report.rss_after = rss_before, tree_rss(server_pid)
    body = [
        "## Latest `make soak` run",
        "",
        *(f"- {fact}" for fact in machine_facts()),
        f"- workload: {total} chat requests, concurrency {concurrency}, two models (GGUF and "
        "ONNX, parallel 4 each), half streaming, max_tokens 4-24; about 10% of clients hang "
        "up mid-stream",
        *report.lines(),
    ]
    print("\n".join(body))
    if output is not None:
        write_section(output, body, start=START, end=END)
    ok = report.lost == 0 and not report.errors and report.held_slots_after == 0
    return 0 if ok else 1


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    return asyncio.run(main(args.requests, args.concurrency, args.output))


if __name__ == "__main__":
    sys.exit(cli())
