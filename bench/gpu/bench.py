"""The GPU bench at c=1/8/32: every system the GPU machine can run, on one GGUF, all layers
offloaded, greedy, 128 tokens per request, streaming, closed-loop clients that never retry.

Systems (each runs only where its needs are met; what is skipped is reported with the reason):
  llama_cpp in-process decode   llama-cpp-python's low-level API alone (bench/gpu/decode.py)
  slmserve engine in-process    slmserve's GGUFEngine, continuous batching, no server
  slmserve HTTP                 the server under test (needs fastapi, uvicorn, pydantic, ...)
  llama.cpp llama-server HTTP   the C++ peer of record, built from the same sources
The HTTP clients are bench/gpu/sse.py (standard library only). Servers are interleaved over
rounds (A B, A B) so a slow patch lands on both; the tables give medians over rounds.

Usage:
  python -m bench.gpu.bench all --model M.gguf --out DIR [--llama-server BIN] [--deadline T]
  python -m bench.gpu.bench engine --model M.gguf          (one system, JSON on stdout)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu import results as results_json
from bench.gpu import sse
from bench.measure import LevelResult
from bench.workload import MAX_TOKENS, Level

REPO = Path(__file__).resolve().parents[2]
LEVELS = (Level(1, 8), Level(8, 3), Level(32, 2))
QUICK_LEVELS = (Level(1, 2), Level(8, 1), Level(32, 1))
CONTEXT_PER_SLOT = 2048
DECODE, ENGINE = "llama_cpp in-process decode", "slmserve engine in-process"
SLMSERVE, NATIVE = "slmserve HTTP", "llama.cpp llama-server HTTP"
HOST = "127.0.0.1"
# What a system needs at least to start and run its levels; skipped when less time is left.
MIN_SECONDS = {DECODE: 40, ENGINE: 60, SLMSERVE: 60, NATIVE: 45}
# What each system imports first: a check in a child process (a package can be there and still
# fail to import, e.g. without one of its own dependencies).
NEEDS = {DECODE: "llama_cpp", ENGINE: "engines.gguf", SLMSERVE: "app.main"}


def log(line: str) -> None:
    print(f"[bench] {line}", file=sys.stderr, flush=True)


def import_error(module: str) -> str | None:
    """None when `module` imports in a fresh interpreter, else the error's last line."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return f"import {module}: {lines[-1] if lines else f'exit {done.returncode}'}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    system: str
    command: Callable[[int], list[str]]  # port -> command line
    ready_path: str
    model: str  # the `model` field requests send


@contextmanager
def serve(server: Server, port: int, log_path: Path) -> Iterator[None]:
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            server.command(port), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{server.system} exited with {process.returncode}")
            try:
                if sse.get_status(HOST, port, server.ready_path) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.system} not ready after 180 s")
            time.sleep(0.2)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def slmserve_server(model: Path, provider: str, slots: int, work: Path) -> Server:
    models = work / "models.yaml"
    entry = {
        "name": "gguf",
        "engine": "gguf",
        "path": str(model),
        "provider": provider,
        "context_length": CONTEXT_PER_SLOT,
        "parallel": slots,
        "max_queue": 4 * slots,
    }
    models.write_text(json.dumps({"models": [entry]}))  # JSON is YAML
    command = [sys.executable, "-m", "app.cli", "serve", "--host", HOST, "--models", str(models)]
    return Server(
        SLMSERVE,
        lambda port: [*command, "--port", str(port), "--log-level", "warning"],
        "/ready",
        "gguf",
    )


def native_server(binary: Path, model: Path, provider: str, slots: int) -> Server:
    command = [str(binary), "-m", str(model), "--host", HOST, "--no-webui"]
    command += ["-np", str(slots), "-c", str(CONTEXT_PER_SLOT * slots)]
    command += ["-ngl", "0" if provider == "cpu" else "999"]
    return Server(NATIVE, lambda port: [*command, "--port", str(port)], "/health", "gguf")


async def http_levels(server: Server, port: int, levels: tuple[Level, ...]) -> list[LevelResult]:
    await sse.one_request(HOST, port, server.model, "Hi")  # warm-up
    results = []
    for level in levels:
        result, errors = await sse.run_level(server.system, HOST, port, server.model, level)
        log(
            f"  {server.system} c={level.clients}: {result.aggregate_tps:.1f} tok/s, TTFT p50 "
            f"{1000 * result.ttft(0.5):.1f} ms, errors {result.errors}"
            + (f" (first: {errors[0]})" if errors else "")
        )
        results.append(result)
    return results


def run_child(command: list[str], log_path: Path, timeout: float | None) -> dict[str, Any]:
    """A system measured in its own process (a crash or the GPU memory stays there)."""
    with log_path.open("wb") as errors:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=errors, timeout=timeout, check=False
        )
    sys.stderr.write(log_path.read_text(errors="replace")[-2000:])
    if done.returncode != 0:
        raise RuntimeError(f"{command[2]} exited with {done.returncode}; see {log_path.name}")
    data: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return data


def engine_main(model: Path, provider: str, levels: tuple[Level, ...]) -> dict[str, Any]:
    from bench import inprocess
    from engines.config import ModelConfig
    from engines.gguf import GGUFEngine

    config = ModelConfig.model_validate(
        {
            "name": "gguf",
            "engine": "gguf",
            "path": str(model),
            "provider": provider,
            "context_length": CONTEXT_PER_SLOT,
            "parallel": max(level.clients for level in levels),
        }
    )
    engine = GGUFEngine(config)
    try:
        engine.warmup()
        runs = [inprocess.run_level(ENGINE, engine, level) for level in levels]
        info = {"provider": engine.info.provider, "load_seconds": engine.info.load_seconds}
    finally:
        engine.close()
    return {"info": info, "results": [results_json.to_json(r) for r in runs]}


def median_table(runs: dict[tuple[str, int], list[LevelResult]]) -> list[str]:
    lines = [
        "| system | conc. | rounds | requests/round | aggregate tok/s, median (min-max) "
        "| TTFT p50 ms, median | ITL p50 ms, median | errors (all rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (system, clients), results in runs.items():
        rates = [r.aggregate_tps for r in results]
        lines.append(
            f"| {system} | {clients} | {len(results)} | {len(results[0].requests)} "
            f"| {statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) "
            f"| {1000 * statistics.median(r.ttft(0.5) for r in results):.1f} "
            f"| {1000 * statistics.median(r.itl(0.5) for r in results):.2f} "
            f"| {sum(r.errors for r in results)} |"
        )
    return lines


def bench_all(args: argparse.Namespace) -> int:
    levels = QUICK_LEVELS if args.quick else LEVELS
    slots = max(level.clients for level in levels)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="slmserve-gpu-bench-"))
    runs: dict[tuple[str, int], list[LevelResult]] = {}
    skipped: dict[str, str] = {}
    extra: dict[str, Any] = {}

    def time_left() -> float:
        return float(args.deadline) - time.time() if args.deadline else float("inf")

    def record(results: list[LevelResult]) -> None:
        for result in results:
            runs.setdefault((result.system, result.concurrency), []).append(result)

    levels_arg = ",".join(str(level.clients) for level in levels)
    decode_flags = ["--levels", levels_arg, "--rounds", "1" if args.quick else "3"]
    engine_command = ["-m", "bench.gpu.bench", "engine", "--model", str(args.model)]
    in_process = [
        (DECODE, ["-m", "bench.gpu.decode", str(args.model), *decode_flags]),
        (ENGINE, engine_command + (["--quick"] if args.quick else [])),
    ]
    for system, command in in_process:
        if why := import_error(NEEDS[system]):
            skipped[system] = why
        elif time_left() < MIN_SECONDS[system]:
            skipped[system] = f"out of time ({time_left():.0f} s left)"
        else:
            log(f"{system}")
            flags = ["--cpu"] if args.provider == "cpu" else []
            try:
                data = run_child(
                    [sys.executable, *command, *flags],
                    work / f"{system.replace(' ', '_')}.log",
                    timeout=None if args.deadline is None else max(30.0, time_left() - 15),
                )
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
                skipped[system] = f"failed: {error}"
                continue
            record([results_json.from_json(r) for r in data["results"]])
            extra[system] = {key: value for key, value in data.items() if key != "results"}

    servers: list[Server] = []
    if why := import_error(NEEDS[SLMSERVE]):
        skipped[SLMSERVE] = why
    else:
        servers.append(slmserve_server(args.model, args.provider, slots, work))
    if args.llama_server and args.llama_server.is_file():
        servers.append(native_server(args.llama_server, args.model, args.provider, slots))
    else:
        skipped[NATIVE] = f"no llama-server binary ({args.llama_server or 'none given'})"
    for round_index in range(1, args.rounds + 1):
        for server in servers:
            if server.system in skipped:
                continue
            if time_left() < MIN_SECONDS[server.system]:
                skipped[server.system] = f"out of time in round {round_index}"
                continue
            log(f"round {round_index}: {server.system}")
            port = free_port()
            log_path = work / f"{server.system.replace(' ', '_')}-{round_index}.log"
            try:
                with serve(server, port, log_path):
                    record(asyncio.run(http_levels(server, port, levels)))
            except (RuntimeError, TimeoutError, *sse.CLIENT_ERRORS) as error:
                skipped[server.system] = f"failed in round {round_index}: {error}"

    logs = sorted(work.glob("*.log"))
    with (out / "servers.log").open("w") as combined:
        for path in logs:
            lines = path.read_text(errors="replace").splitlines()
            combined.write(f"===== {path.name} (last 300 of {len(lines)} lines)\n")
            combined.write("\n".join(lines[-300:]) + "\n")

    all_results = [r for results in runs.values() for r in results]
    best = {}
    for (system, clients), results in runs.items():
        best[(system, clients)] = sorted(results, key=lambda r: r.aggregate_tps)[len(results) // 2]
    body = [
        f"## GPU bench ({args.provider})",
        "",
        f"- model: {args.model.name} ({args.model_kind}); {args.model_note}",
        f"- workload: greedy, max_tokens {MAX_TOKENS}, streaming, closed-loop clients that never "
        f"retry; levels: "
        + ", ".join(f"c={level.clients} x {level.requests_each} requests each" for level in levels),
        f"- slots: {slots} of {CONTEXT_PER_SLOT} tokens (slmserve parallel {slots}; llama-server "
        f"-np {slots} -c {slots * CONTEXT_PER_SLOT} -ngl {'0' if args.provider == 'cpu' else 999})"
        f"; HTTP servers over {args.rounds} interleaved round(s)",
        "",
        *median_table(runs),
        "",
    ]
    ratio_lines = results_json.ratios(list(best.values()), SLMSERVE, NATIVE)
    if ratio_lines:
        body += ["Ratios of the medians:", "", *ratio_lines, ""]
    for system, info in extra.items():
        if info.get("log"):
            body += [f"{system}, llama.cpp says:", "", *(f"    {x}" for x in info["log"][:8]), ""]
        if info.get("info"):
            body += [f"{system}: {info['info']}", ""]
    if skipped:
        body += ["Skipped:", "", *(f"- {system}: {why}" for system, why in skipped.items()), ""]
    (out / "bench.md").write_text("\n".join(body) + "\n")
    (out / "bench.json").write_text(
        json.dumps(
            {
                "model": str(args.model),
                "model_kind": args.model_kind,
                "provider": args.provider,
                "results": [results_json.to_json(r, timings=False) for r in all_results],
                "skipped": skipped,
                "extra": extra,
            },
            indent=1,
        )
    )
    print("\n".join(body))
    return 0 if runs else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    every = commands.add_parser("all", help="every system that can run here")
    every.add_argument("--model", type=Path, required=True)
    every.add_argument("--model-kind", default="real", help="real | twin (for the report)")
    every.add_argument("--model-note", default="", help="one line on the model, for the report")
    every.add_argument("--out", type=Path, required=True)
    every.add_argument("--llama-server", type=Path)
    every.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    every.add_argument("--rounds", type=int, default=2)
    every.add_argument("--deadline", type=float, help="epoch seconds: skip what cannot finish")
    every.add_argument("--quick", action="store_true", help="one or two requests per level")
    one = commands.add_parser("engine", help="slmserve's GGUFEngine in-process (JSON out)")
    one.add_argument("--model", type=Path, required=True)
    one.add_argument("--quick", action="store_true")
    one.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if args.command == "engine":
        levels = QUICK_LEVELS if args.quick else LEVELS
        provider = "cpu" if args.cpu else "cuda"
        print(json.dumps(engine_main(args.model, provider, levels)))
        return 0
    return bench_all(args)


if __name__ == "__main__":
    sys.exit(main())
