"""Execution providers through the live server: auto, and unavailable explicit choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import openai_client
from tests.e2e.server import run_server, wait_until_settled, write_models


def test_unavailable_providers_fail_their_model_only(
    default_model_path: Path, onnx_model_path: Path, tmp_path: Path
) -> None:
    onnx: dict[str, Any] = {"engine": "onnx", "path": str(onnx_model_path), "context_length": 512}
    models = [
        {"name": "gguf", "engine": "gguf", "path": str(default_model_path), "context_length": 512},
        {"name": "onnx-auto", "provider": "auto", **onnx},
        {"name": "onnx-cuda", "provider": "cuda", **onnx},
        {"name": "onnx-dml", "provider": "dml", **onnx},
    ]
    models_file = write_models(tmp_path / "models.yaml", models)
    with run_server(models_file, tmp_path / "server.log", wait_ready=False) as server:
        ready = wait_until_settled(server, timeout_s=120)
        # Failed models keep the replica out of a load balancer's rotation.
        assert ready.status_code == 503
        assert ready.json()["models"]["onnx-cuda"] == "failed"
        cards = server.models()
        assert (cards["onnx-auto"]["state"], cards["onnx-auto"]["provider"]) == ("ready", "cpu")
        assert cards["onnx-cuda"]["state"] == "failed"
        assert "Cuda interface not available" in cards["onnx-cuda"]["state_reason"]
        assert cards["onnx-dml"]["state"] == "failed"
        assert "not been built with DML support" in cards["onnx-dml"]["state_reason"]
        client = openai_client(server)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(
                model="onnx-cuda", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        assert caught.value.status_code == 503
        assert caught.value.code == "model_unavailable"
        assert "Cuda interface not available" in caught.value.message
        for working in ("gguf", "onnx-auto"):
            completion = client.chat.completions.create(
                model=working, messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert completion.choices[0].message.content
        assert "provider cpu (asked for auto)" in server.log()
