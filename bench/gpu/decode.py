"""llama.cpp through llama-cpp-python's low-level API, in-process, no slmserve code: `clients`
sequences prefilled together, then decoded together one token per step (greedy), every layer
on the GPU. What the CUDA build itself does, with nothing between it and the loop; needs only
llama_cpp (and what it imports: numpy, jinja2, diskcache, typing_extensions).

Usage: python -m bench.gpu.decode MODEL.gguf [--levels 1,8,32] [--cpu]   (prints JSON)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp

from bench.gpu import results as results_json
from bench.measure import LevelResult, RequestTiming
from bench.workload import MAX_TOKENS, prompt_for

SYSTEM = "llama_cpp in-process decode"
CONTEXT_PER_SEQUENCE = 512
_LOG_LINES: list[str] = []


def _keep_log(_level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", "replace").strip()
    wanted = any(word in line for word in ("offload", "CUDA", "GPU", "flash_attn"))
    if wanted and line not in _LOG_LINES:
        _LOG_LINES.append(line)


# Kept alive for the process: llama.cpp holds the raw function pointer.
_LOG_CALLBACK = llama_cpp.llama_log_callback(_keep_log)


def _tokenize(vocab: Any, text: str) -> list[int]:
    data = text.encode()
    buffer = (llama_cpp.llama_token * (len(data) + 8))()
    count = int(llama_cpp.llama_tokenize(vocab, data, len(data), buffer, len(buffer), True, False))
    if count < 0:
        raise RuntimeError(f"tokenizing {text!r} failed ({count})")
    return list(buffer[:count])


def _set(batch: Any, index: int, token: int, position: int, sequence: int, logits: bool) -> None:
    batch.token[index] = token
    batch.pos[index] = position
    batch.n_seq_id[index] = 1
    batch.seq_id[index][0] = sequence
    batch.logits[index] = logits


def run_level(model: Any, clients: int, rounds: int) -> LevelResult:
    """`rounds` times: `clients` sequences, prefilled in one batch, decoded MAX_TOKENS steps."""
    vocab = llama_cpp.llama_model_get_vocab(model)
    prompts = [_tokenize(vocab, prompt_for(i)) for i in range(clients)]
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = CONTEXT_PER_SEQUENCE * clients
    params.n_seq_max = clients
    params.n_batch = params.n_ubatch = max(512, sum(len(p) for p in prompts))
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = len(os.sched_getaffinity(0))
    context = llama_cpp.llama_init_from_model(model, params)
    if not context:
        raise RuntimeError(f"no context of {params.n_ctx} tokens")
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
    sampler = llama_cpp.llama_sampler_init_greedy()
    memory = llama_cpp.llama_get_memory(context)
    timings: list[RequestTiming] = []
    started = time.perf_counter()
    try:
        for _ in range(rounds):
            llama_cpp.llama_memory_clear(memory, True)
            round_start = time.perf_counter()
            batch.n_tokens = 0
            outputs = []  # batch index of each sequence's last prompt token
            for sequence, prompt in enumerate(prompts):
                for position, token in enumerate(prompt):
                    last = position == len(prompt) - 1
                    _set(batch, batch.n_tokens, token, position, sequence, last)
                    batch.n_tokens += 1
                outputs.append(batch.n_tokens - 1)
            round_timings = [RequestTiming(started=round_start) for _ in prompts]
            positions = [len(prompt) for prompt in prompts]
            for _step in range(MAX_TOKENS):
                if llama_cpp.llama_decode(context, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                tokens = [
                    int(llama_cpp.llama_sampler_sample(sampler, context, index))
                    for index in outputs
                ]
                now = time.perf_counter()
                batch.n_tokens = 0
                for sequence, token in enumerate(tokens):
                    round_timings[sequence].token_times.append(now)
                    round_timings[sequence].tokens += 1
                    _set(batch, sequence, token, positions[sequence], sequence, True)
                    positions[sequence] += 1
                batch.n_tokens = len(tokens)
                outputs = list(range(len(tokens)))
            timings += round_timings
        llama_cpp.llama_synchronize(context)
        return LevelResult(SYSTEM, clients, time.perf_counter() - started, timings)
    finally:
        llama_cpp.llama_sampler_free(sampler)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="no offload (n_gpu_layers=0)")
    args = parser.parse_args()
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0 if args.cpu else -1
    model = llama_cpp.llama_model_load_from_file(str(args.model).encode(), params)
    if not model:
        print(f"decode: llama.cpp could not load {args.model}", file=sys.stderr)
        return 1
    results = []
    for clients in (int(level) for level in args.levels.split(",")):
        result = run_level(model, clients, args.rounds)
        print(f"  {SYSTEM} c={clients}: {result.aggregate_tps:.1f} tok/s", file=sys.stderr)
        results.append(result)
    report = {
        "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
        "layers": int(llama_cpp.llama_model_n_layer(model)),
        "log": _LOG_LINES,
        "results": [results_json.to_json(r) for r in results],
    }
    llama_cpp.llama_model_free(model)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
