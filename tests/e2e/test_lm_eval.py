"""lm-evaluation-harness against a live slmserve: a local multiple-choice task scored by
log-likelihood through /v1/completions (echo + logprobs, token-id prompts), with the harness's
remote tokenizer (/tokenizer_info, /tokenize, /detokenize). Every score the harness logged must
equal the one llama-cpp-python computes directly for the same tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llama_cpp import Llama

from engines.gguf import SCORING_CHUNK
from tests.conftest import DEFAULT_MODEL_NAME
from tests.e2e.server import LiveServer

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = Path(__file__).parent / "lm_eval_task"
TASK = "slmserve_general_knowledge"


def log_softmax(row: np.ndarray) -> np.ndarray:
    values = row.astype(np.float64)
    result: np.ndarray = values - (values.max() + np.log(np.exp(values - values.max()).sum()))
    return result


def run_harness(server: LiveServer, output: Path) -> None:
    model_args = ",".join(
        [
            f"model={DEFAULT_MODEL_NAME}",
            f"base_url={server.base_url}/v1/completions",
            "tokenizer_backend=remote",  # the server's /tokenize: no tokenizer download
            "num_concurrent=1",
            "max_retries=1",
        ]
    )
    command = [sys.executable, "-m", "lm_eval", "--model", "local-completions"]
    command += ["--model_args", model_args, "--tasks", TASK]
    command += ["--include_path", str(TASK_DIR.relative_to(REPO))]
    command += ["--output_path", str(output), "--log_samples"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["HF_DATASETS_CACHE"] = str(output / "datasets-cache")
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def test_lm_eval_multiple_choice_scores_match_llama_cpp(
    gguf_server: LiveServer, default_model_path: Path, tmp_path: Path
) -> None:
    run_harness(gguf_server, tmp_path / "out")
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    accuracy = json.loads(results_file.read_text())["results"][TASK]["acc,none"]
    [samples_file] = (tmp_path / "out").rglob(f"samples_{TASK}_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == len((TASK_DIR / "questions.jsonl").read_text().splitlines())

    # The server's llama.cpp context: flash attention (llama.cpp's default), one batch per
    # scoring chunk.
    llama = Llama(
        str(default_model_path),
        n_ctx=1024,
        n_batch=SCORING_CHUNK,
        n_ubatch=SCORING_CHUNK,
        logits_all=True,
        flash_attn=True,
        verbose=False,
    )

    def tokenize(text: str) -> list[int]:
        return llama.tokenize(text.encode(), add_bos=False, special=True)

    checked = 0
    for sample in samples:
        for index, arguments in enumerate(sample["arguments"].values()):
            context, continuation = arguments["arg_0"], arguments["arg_1"]
            # The harness's split: the whole text's tokens, the context's count.
            whole, context_length = tokenize(context + continuation), len(tokenize(context))
            llama.reset()  # type: ignore[no-untyped-call]
            llama.eval(whole)
            expected = sum(
                float(log_softmax(llama.scores[position - 1])[whole[position]])
                for position in range(context_length, len(whole))
            )
            logged = float(sample["resps"][index][0][0])
            assert logged == pytest.approx(expected, abs=1e-3), (context, continuation)
            checked += 1
    assert checked == 4 * len(samples)
    # Easy questions: well above chance (0.25) for this small model.
    assert accuracy >= 0.4
