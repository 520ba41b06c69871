"""Shared fixtures: the real models (never skipped: `make test` fetches and converts them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# SLMSERVE_TEST_GGUF: another GGUF in its place (bench/gpu/run.sh, on a machine without it).
DEFAULT_MODEL_PATH = Path(
    os.environ.get("SLMSERVE_TEST_GGUF") or REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
ONNX_MODEL_PATH = REPO / "models" / "SmolLM2-135M-Instruct-onnx-int4-cpu"
ONNX_MODEL_NAME = "smollm2-135m-instruct-onnx"
# A second family: Gemma 3 270M, a base model (no chat template), GGUF and converted ONNX.
GEMMA_MODEL_PATH = REPO / "models" / "gemma-3-270m-q4_k_m.gguf"
GEMMA_ONNX_MODEL_PATH = REPO / "models" / "gemma-3-270m-onnx-int4-cpu"


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    if not DEFAULT_MODEL_PATH.is_file():
        pytest.fail(f"{DEFAULT_MODEL_PATH} is missing: run `make models` (make test does)")
    return DEFAULT_MODEL_PATH


@pytest.fixture(scope="session")
def onnx_model_path() -> Path:
    if not (ONNX_MODEL_PATH / "genai_config.json").is_file():
        pytest.fail(f"{ONNX_MODEL_PATH} is missing: run `make models` (make test does)")
    return ONNX_MODEL_PATH


@pytest.fixture(scope="session")
def gemma_model_path() -> Path:
    if not GEMMA_MODEL_PATH.is_file():
        pytest.fail(f"{GEMMA_MODEL_PATH} is missing: run `make test-models` (make test does)")
    return GEMMA_MODEL_PATH


@pytest.fixture(scope="session")
def gemma_onnx_model_path() -> Path:
    if not (GEMMA_ONNX_MODEL_PATH / "genai_config.json").is_file():
        pytest.fail(f"{GEMMA_ONNX_MODEL_PATH} is missing: run `make test-models` (make test does)")
    return GEMMA_ONNX_MODEL_PATH
