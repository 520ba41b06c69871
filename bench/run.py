"""`make bench`: slmserve against llama-cpp-python's server and the bare engines, in one run.

Usage: python -m bench.run [--quick] [--output BENCHMARKS.md]

Systems (one after another, on the same machine, same prompts and max_tokens, greedy):
  slmserve gguf / onnx     the server under test, streaming through HTTP (ONNX twice: with
                           interleaved generators, and with og.Engine batches)
  peer llama_cpp.server    llama-cpp-python's own server, same GGUF, same build
  in-process gguf / onnx   the engines driven directly, no server: the ceiling
Then /health latency while slmserve prefills a ~1,000-token prompt, on each engine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench import http_load, inprocess, report
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

SLMSERVE_GGUF, SLMSERVE_ONNX = "slmserve gguf", "slmserve onnx"
SLMSERVE_ONNX_BATCHED = "slmserve onnx og.Engine"
PEER, INPROCESS_GGUF, INPROCESS_ONNX = "peer llama_cpp.server", "in-process gguf", "in-process onnx"


def model_configs() -> list[dict[str, Any]]:
    common = {"context_length": CONTEXT, "parallel": PARALLEL, "max_queue": 64}
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


async def main(quick: bool, output: Path) -> int:
    levels = QUICK_LEVELS if quick else LEVELS
    results: list[LevelResult] = []
    health: dict[str, dict[str, float]] = {}
    prompt_tokens: dict[str, int] = {}
    configs = model_configs()
    with tempfile.TemporaryDirectory(prefix="slmserve-bench-") as scratch:
        work = Path(scratch)
        models_file = work / "models.yaml"
        models_file.write_text(yaml.safe_dump({"models": configs}))

        log("in-process engines")
        results += run_inprocess(INPROCESS_GGUF, configs[0], levels)
        results += run_inprocess(INPROCESS_ONNX, configs[1], levels)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log("slmserve")
        with serve(slmserve_command(models_file, port), f"{base}/ready", work / "slmserve.log"):
            results += await run_http(SLMSERVE_GGUF, base, "gguf", levels)
            results += await run_http(SLMSERVE_ONNX, base, "onnx", levels)
            results += await run_http(SLMSERVE_ONNX_BATCHED, base, "onnx-batched", levels)
            for model in ("gguf", "onnx"):
                latencies, prompt_tokens[model] = await health_during_prefill(base, model)
                health[model] = summary(latencies)
                log(f"  /health during a {prompt_tokens[model]}-token prefill: {health[model]}")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log("peer: llama_cpp.server")
        with serve(peer_command(GGUF, port, CONTEXT), f"{base}/v1/models", work / "peer.log"):
            results += await run_http(PEER, base, str(GGUF), levels)

    order = [
        INPROCESS_GGUF,
        SLMSERVE_GGUF,
        PEER,
        INPROCESS_ONNX,
        SLMSERVE_ONNX,
        SLMSERVE_ONNX_BATCHED,
    ]
    results.sort(key=lambda r: (order.index(r.system), r.concurrency))
    health_p99 = {model: figures["p99_ms"] for model, figures in health.items()}
    body = [
        "## Latest `make bench` run" + (" (quick)" if quick else ""),
        "",
        *(f"- {fact}" for fact in report.machine_facts()),
        f"- workload: SmolLM2-135M-Instruct (GGUF Q4_1 and ONNX int4), greedy, max_tokens "
        f"{128}, streaming, closed-loop clients; slmserve models with parallel={PARALLEL}, "
        f"context {CONTEXT}; peer with --n_threads 2 --logits_all false "
        "--interrupt_requests false.",
        "",
        *report.table(results),
        "",
        "GGUF ratios (same run):",
        "",
        *report.ratios(results, SLMSERVE_GGUF, PEER, INPROCESS_GGUF),
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
        *report.targets(results, SLMSERVE_GGUF, PEER, INPROCESS_GGUF, health_p99),
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
