"""SIGTERM: in-flight streams finish, new work is refused, workers end."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import pid_exists, run_server, write_models


def test_sigterm_lets_a_stream_finish_and_refuses_new_work(
    default_model_path: Path, tmp_path: Path
) -> None:
    model = {"name": "m", "engine": "gguf", "path": str(default_model_path), "context_length": 512}
    models_file = write_models(tmp_path / "models.yaml", [model])
    with run_server(models_file, tmp_path / "server.log") as server:
        worker_pid = server.models()["m"]["pid"]
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "Write a very long story about dragons."}],
            "max_tokens": 150,
            "temperature": 0,
            "stream": True,
        }
        payloads: list[str] = []
        url = f"{server.base_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                payloads.append(line.removeprefix("data: "))
                if len(payloads) == 5:
                    server.process.send_signal(signal.SIGTERM)
                    time.sleep(0.3)
                    with pytest.raises(httpx.ConnectError):
                        httpx.post(url, json={**body, "stream": False}, timeout=5)
        assert payloads[-1] == "[DONE]"
        finish = json.loads(payloads[-2])
        assert finish["choices"][0]["finish_reason"] == "length"
        content = [json.loads(p) for p in payloads[1:-2]]
        assert len(content) == 150
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert not pid_exists(worker_pid)
        assert "draining: new requests are refused" in server.log()
