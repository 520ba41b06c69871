"""The results table, the targets, and the BENCHMARKS.md section."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

from bench.measure import LevelResult

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def machine_facts() -> list[str]:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = match.group(1).strip() if match else cpu
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("llama-cpp-python", "onnxruntime-genai", "fastapi", "uvicorn")
    )
    return [
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {cpu}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.platform()}",
        f"software: Python {platform.python_version()}, {versions}",
    ]


def table(results: list[LevelResult]) -> list[str]:
    lines = [
        "| system | conc. | requests | tokens | aggregate tok/s | per-stream decode tok/s "
        "| TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.concurrency} | {len(r.requests)} | {r.tokens} "
            f"| {r.aggregate_tps:.1f} | {r.decode_tps:.1f} | {1000 * r.ttft(0.5):.0f} "
            f"| {1000 * r.ttft(0.99):.0f} | {1000 * r.itl(0.5):.1f} | {1000 * r.itl(0.99):.1f} "
            f"| {r.errors} |"
        )
    return lines


def find(results: list[LevelResult], system: str, concurrency: int) -> LevelResult | None:
    for result in results:
        if result.system == system and result.concurrency == concurrency:
            return result
    return None


def ratios(results: list[LevelResult], ours: str, peer: str, inprocess: str) -> list[str]:
    lines = [
        "| conc. | aggregate: slmserve / peer | aggregate: slmserve / in-process "
        "| decode: slmserve / in-process | decode: slmserve / peer "
        "| TTFT p50: slmserve / peer |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in sorted({r.concurrency for r in results}):
        mine, theirs, local = (find(results, s, concurrency) for s in (ours, peer, inprocess))
        if mine is None or theirs is None or local is None:
            continue
        lines.append(
            f"| {concurrency} | {mine.aggregate_tps / theirs.aggregate_tps:.2f} "
            f"| {mine.aggregate_tps / local.aggregate_tps:.2f} "
            f"| {mine.decode_tps / local.decode_tps:.2f} "
            f"| {mine.decode_tps / theirs.decode_tps:.2f} "
            f"| {mine.ttft(0.5) / theirs.ttft(0.5):.2f} |"
        )
    return lines


def check(label: str, value: float, target: str, met: bool) -> str:
    return f"- {label}: {value:.2f} (target {target}): {'met' if met else 'NOT met'}"


def targets(
    results: list[LevelResult],
    ours: str,
    peer: str,
    inprocess: str,
    health_p99_ms: dict[str, float],
) -> list[str]:
    lines = []
    mine, theirs, local = (find(results, system, 1) for system in (ours, peer, inprocess))
    if mine is not None and theirs is not None and local is not None:
        value = mine.decode_tps / local.decode_tps
        lines.append(check("c=1 decode, slmserve / in-process", value, ">= 0.95", value >= 0.95))
        value = mine.decode_tps / theirs.decode_tps
        lines.append(check("c=1 decode, slmserve / peer", value, ">= 1.0", value >= 1.0))
    mine, theirs = (find(results, system, 4) for system in (ours, peer))
    if mine is not None and theirs is not None:
        value = mine.aggregate_tps / theirs.aggregate_tps
        lines.append(check("c=4 aggregate tok/s, slmserve / peer", value, ">= 1.5", value >= 1.5))
        value = mine.ttft(0.5) / theirs.ttft(0.5)
        lines.append(check("c=4 TTFT p50, slmserve / peer", value, "<= 0.3", value <= 0.3))
    for model, p99 in health_p99_ms.items():
        lines.append(
            check(f"/health p99 ms during a long prefill ({model})", p99, "< 50", p99 < 50)
        )
    return lines


def write_section(path: Path, body: list[str], *, start: str = START, end: str = END) -> None:
    """Replace the section between `start` and `end` (or append it), leaving the rest alone."""
    section = "\n".join([start, *body, end])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
