"""The official OpenAI JavaScript SDK against the live server, on both engines (node:test)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import Target

JS_DIR = REPO / "tests" / "js"


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the JavaScript conformance tests")
    installed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    return Path(node)


def test_openai_js_sdk(target: Target, js_sdk: Path) -> None:
    engine = "onnx" if target.model.endswith("onnx") else "gguf"
    environment = {
        **os.environ,
        "SLMSERVE_BASE_URL": target.server.base_url,
        "SLMSERVE_MODEL": target.model,
        "SLMSERVE_ENGINE": engine,
    }
    result = subprocess.run(
        [str(js_sdk), "--test", "--test-reporter=spec", "conformance.test.mjs"],
        cwd=JS_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fail 0" in result.stdout
    assert "pass 7" in result.stdout, result.stdout  # every test ran
