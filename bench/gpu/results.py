"""Level results to and from JSON (they cross process boundaries), and the markdown tables."""

from __future__ import annotations

from typing import Any

from bench.measure import LevelResult, RequestTiming


def to_json(result: LevelResult, *, timings: bool = True) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "system": result.system,
        "concurrency": result.concurrency,
        "requests": len(result.requests),
        "tokens": result.tokens,
        "wall_s": round(result.wall_s, 4),
        "aggregate_tps": round(result.aggregate_tps, 1),
        "decode_tps_per_stream": round(result.decode_tps, 1),
        "ttft_p50_ms": round(1000 * result.ttft(0.5), 2),
        "ttft_p99_ms": round(1000 * result.ttft(0.99), 2),
        "itl_p50_ms": round(1000 * result.itl(0.5), 3),
        "itl_p99_ms": round(1000 * result.itl(0.99), 3),
        "errors": result.errors,
    }
    if timings:
        summary["timings"] = [
            {"started": r.started, "tokens": r.tokens, "token_times": r.token_times}
            for r in result.requests
        ]
    return summary


def from_json(data: dict[str, Any]) -> LevelResult:
    requests = [
        RequestTiming(
            started=float(r["started"]),
            token_times=[float(t) for t in r["token_times"]],
            tokens=int(r["tokens"]),
        )
        for r in data["timings"]
    ]
    return LevelResult(
        str(data["system"]),
        int(data["concurrency"]),
        float(data["wall_s"]),
        requests,
        int(data["errors"]),
    )


def table(results: list[LevelResult]) -> list[str]:
    lines = [
        "| system | conc. | requests | tokens | aggregate tok/s | per-stream tok/s "
        "| TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.concurrency} | {len(r.requests)} | {r.tokens} "
            f"| {r.aggregate_tps:.1f} | {r.decode_tps:.1f} | {1000 * r.ttft(0.5):.1f} "
            f"| {1000 * r.ttft(0.99):.1f} | {1000 * r.itl(0.5):.2f} | {1000 * r.itl(0.99):.2f} "
            f"| {r.errors} |"
        )
    return lines


def ratios(results: list[LevelResult], ours: str, peer: str) -> list[str]:
    by_key = {(r.system, r.concurrency): r for r in results}
    lines = [
        f"| conc. | aggregate tok/s: {ours} / {peer} | TTFT p50: {ours} / {peer} |",
        "|---:|---:|---:|",
    ]
    for clients in sorted({r.concurrency for r in results}):
        mine, theirs = by_key.get((ours, clients)), by_key.get((peer, clients))
        if mine is None or theirs is None or not theirs.aggregate_tps or not theirs.ttft(0.5):
            continue
        lines.append(
            f"| {clients} | {mine.aggregate_tps / theirs.aggregate_tps:.2f} "
            f"| {mine.ttft(0.5) / theirs.ttft(0.5):.2f} |"
        )
    return lines if len(lines) > 2 else []
