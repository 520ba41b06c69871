"""`make bench`: slmserve against llama.cpp's own server, llama-cpp-python's server and the
bare engines, in one run.

Usage: python -m bench.run [--quick] [--output BENCHMARKS.md]

GGUF servers, interleaved over rounds (bench/rounds.py; same model, slots, context, threads):
  slmserve gguf            the server under test, streaming through HTTP
  llama.cpp llama-server   the peer of record: C++, built from the llama.cpp that the pinned
                           llama-cpp-python vendors (bench/native_server.py)
  peer llama_cpp.server    llama-cpp-python's own server, same GGUF, same build
Then, one run each: the engines driven directly (in-process, no server: the ceiling), slmserve
on the ONNX model (interleaved generators, and og.Engine batches), the second turn of ~1,000-token
conversations against their first on the ONNX engine (prefix reuse, bench/multi_turn.py), and
/health latency while slmserve prefills a ~1,000-token prompt, on each engine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench import http_load, inprocess, multi_turn, native_server, report, rounds
from bench.health_probe import health_during_prefill, summary
from bench.measure import LevelResult
from bench.processes import free_port, peer_command, serve, slmserve_command
from bench.workload import LEVELS, QUICK_LEVELS, Level
from engines.config import ModelConfig
from engines.gguf import GGUFEngine
from engines.onnx import OnnxEngine

REPO = Path(__file__).resolve().parents[1]
GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ONNX = REPO / "models" / "SmolLM2-135M-Instruct-onnx-int4-cpu"
CONTEXT = 2048
PARALLEL = 8

THREADS = 2
SLMSERVE_GGUF, SLMSERVE_ONNX = "slmserve gguf", "slmserve onnx"
SLMSERVE_ONNX_BATCHED = "slmserve onnx og.Engine"
PEER, INPROCESS_GGUF, INPROCESS_ONNX = "peer llama_cpp.server", "in-process gguf", "in-process onnx"
NATIVE = "llama.cpp llama-server"


def model_configs() -> list[dict[str, Any]]:
    common = {
        "context_length": CONTEXT,
        "parallel": PARALLEL,
        "max_queue": 64,
        "n_threads": THREADS,
    }
    return [
        {"name": "gguf", "engine": "gguf", "path": str(GGUF), **common},
        {"name": "onnx", "engine": "onnx", "path": str(ONNX), **common},
        {
            "name": "onnx-batched",
            "engine": "onnx",
            "path": str(ONNX),
            "batching": "engine",
            "preload": False,
            **common,
        },
    ]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_http(
    system: str, base_url: str, model: str, levels: tuple[Level, ...]
) -> list[LevelResult]:
    await http_load.warm_up(base_url, model)
    results = []
    for level in levels:
        result = await http_load.run_level(system, base_url, model, level)
        log(f"  {system} c={level.clients}: {result.aggregate_tps:.1f} tok/s")
        results.append(result)
    return results


def run_inprocess(
    system: str, config: dict[str, Any], levels: tuple[Level, ...]
) -> list[LevelResult]:
    model = ModelConfig.model_validate(config)
    engine = GGUFEngine(model) if model.engine == "gguf" else OnnxEngine(model)
    try:
        engine.warmup()
        results = []
        for level in levels:
            result = inprocess.run_level(system, engine, level)
            log(f"  {system} c={level.clients}: {result.aggregate_tps:.1f} tok/s")
            results.append(result)
        return results
    finally:
        engine.close()


def run_multi_turn(config: dict[str, Any]) -> multi_turn.MultiTurnResult:
    engine = OnnxEngine(ModelConfig.model_validate(config))
    try:
        engine.warmup()
        result = multi_turn.measure(engine)
    finally:
        engine.close()
    log(f"  second-turn / first-turn TTFT: {result.ratio:.3f}")
    return result


def gguf_servers(work: Path) -> list[rounds.Server]:
    """The three GGUF servers with the same slots, context per slot and threads."""
    gguf_only = work / "gguf.yaml"
    gguf_only.write_text(yaml.safe_dump({"models": model_configs()[:1]}))
    binary = native_server.build()
    return [
        rounds.Server(
            SLMSERVE_GGUF, lambda port: slmserve_command(gguf_only, port), "/ready", "gguf"
        ),
        rounds.Server(
            NATIVE,
            lambda port: native_server.command(
                binary, GGUF, port, context_per_slot=CONTEXT, slots=PARALLEL, threads=THREADS
            ),
            "/health",
            "gguf",
        ),
        # It serves one request at a time, so its context is one slot's.
        rounds.Server(
            PEER, lambda port: peer_command(GGUF, port, CONTEXT), "/v1/models", str(GGUF)
        ),
    ]


async def main(quick: bool, output: Path) -> int:
    levels = QUICK_LEVELS if quick else LEVELS
    results: list[LevelResult] = []
    health: dict[str, dict[str, float]] = {}
    prompt_tokens: dict[str, int] = {}
    configs = model_configs()
    with tempfile.TemporaryDirectory(prefix="slmserve-bench-") as scratch:
        work = Path(scratch)
        log("GGUF servers, interleaved rounds")
        round_levels = rounds.QUICK_ROUND_LEVELS if quick else rounds.ROUND_LEVELS
        round_count = 1 if quick else rounds.ROUNDS
        runs = await rounds.interleaved(gguf_servers(work), round_levels, round_count, work)

        log("in-process engines")
        results += run_inprocess(INPROCESS_GGUF, configs[0], levels)
        results += run_inprocess(INPROCESS_ONNX, configs[1], levels)
        log("multi-turn prefix reuse, onnx in-process")
        conversations = run_multi_turn(configs[1])

        models_file = work / "models.yaml"
        models_file.write_text(yaml.safe_dump({"models": configs}))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log("slmserve onnx, and /health during long prefills")
        with serve(slmserve_command(models_file, port), f"{base}/ready", work / "slmserve.log"):
            results += await run_http(SLMSERVE_ONNX, base, "onnx", levels)
            results += await run_http(SLMSERVE_ONNX_BATCHED, base, "onnx-batched", levels)
            for model in ("gguf", "onnx"):
                latencies, prompt_tokens[model] = await health_during_prefill(base, model)
                health[model] = summary(latencies)
                log(f"  /health during a {prompt_tokens[model]}-token prefill: {health[model]}")

    order = [INPROCESS_GGUF, INPROCESS_ONNX, SLMSERVE_ONNX, SLMSERVE_ONNX_BATCHED]
    results.sort(key=lambda r: (order.index(r.system), r.concurrency))
    requests = ", ".join(f"c={level.clients}: {level.total}" for level in round_levels)
    body = [
        "## Latest `make bench` run" + (" (quick)" if quick else ""),
        "",
        *(f"- {fact}" for fact in report.machine_facts()),
        f"- workload: SmolLM2-135M-Instruct (GGUF Q4_1 and ONNX int4), greedy, max_tokens "
        f"{128}, streaming, closed-loop clients that never retry (any client error counts).",
        f"- GGUF servers: {PARALLEL} slots of {CONTEXT} tokens and {THREADS} threads on each "
        f"(llama-server -np {PARALLEL} -c {PARALLEL * CONTEXT} -t {THREADS}; llama-cpp-python's "
        f"server serves one request at a time, --n_threads {THREADS} --logits_all false "
        f"--interrupt_requests false); {round_count} interleaved rounds, requests per round "
        f"{requests}; medians over rounds, spread min-max.",
        "",
        *rounds.table(runs),
        "",
        "Ratios of the medians:",
        "",
        *rounds.ratios(runs, SLMSERVE_GGUF, [NATIVE, PEER]),
        "",
        "Engines in-process (the ceiling) and slmserve on the ONNX model, one run each:",
        "",
        *report.table(results),
        "",
        f"Multi-turn prefix reuse on the ONNX engine in-process: {multi_turn.ROUNDS} "
        f"conversations, each a ~1,000-token first turn then a second turn sending it again "
        f"with one more question (greedy, max_tokens {multi_turn.MAX_TOKENS}):",
        "",
        *conversations.table(),
        "",
        "/health latency while slmserve prefills a long prompt:",
        "",
        "| model | prompt tokens | probes | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {model} | {prompt_tokens[model]} | {f['probes']:.0f} | {f['p50_ms']:.1f} "
            f"| {f['p99_ms']:.1f} | {f['max_ms']:.1f} |"
            for model, f in health.items()
        ),
        "",
        "Targets:",
        "",
        *rounds.targets(runs, SLMSERVE_GGUF, NATIVE, PEER),
        conversations.check(),
        *(
            report.check(
                f"/health p99 ms during a long prefill ({model})",
                f["p99_ms"],
                "< 50",
                f["p99_ms"] < 50,
            )
            for model, f in health.items()
        ),
    ]
    print("\n".join(body))
    report.write_section(output, body)
    log(f"written to {output}")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests, c=1 and c=4 only")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    return asyncio.run(main(args.quick, args.output))


if __name__ == "__main__":
    sys.exit(cli())
