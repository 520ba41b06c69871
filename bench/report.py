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


def check(label: str, value: float, target: str, met: bool) -> str:
    return f"- {label}: {value:.2f} (target {target}): {'met' if met else 'NOT met'}"


def write_section(path: Path, body: list[str], *, start: str = START, end: str = END) -> None:
    """Replace the section between `start` and `end` (or append it), leaving the rest alone."""
    section = "\n".join([start, *body, end])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
