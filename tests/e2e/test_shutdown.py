"""SIGTERM, in the order a load balancer understands: /ready turns 503 at once, new requests are
still served for the grace, then refused; in-flight streams finish; workers end."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import pid_exists, run_server, write_models


@pytest.mark.parametrize("grace_s", [0.0, 2.0])
def test_sigterm_lets_a_stream_finish_and_refuses_new_work_after_the_grace(
    default_model_path: Path, tmp_path: Path, grace_s: float
) -> None:
    model = {
        "name": "m",
        "engine": "gguf",
        "path": str(default_model_path),
        "context_length": 1024,
        "parallel": 2,
    }
    models_file = write_models(tmp_path / "models.yaml", [model])
    # A generous drain timeout: on a busy machine the stream may run slowly.
    extra = ("--drain-grace-s", str(grace_s), "--drain-timeout-s", "120")
    with run_server(models_file, tmp_path / "server.log", extra_args=extra) as server:
        worker_pid = server.models()["m"]["pid"]
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "Write a very long story about dragons."}],
            "max_tokens": 150,
            "temperature": 0,
            "stream": True,
        }
        short = {**body, "stream": False, "max_tokens": 4}
        payloads: list[str] = []
        url = f"{server.base_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                payloads.append(line.removeprefix("data: "))
                if len(payloads) != 5:
                    continue
                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                if grace_s:
                    ready = httpx.get(f"{server.base_url}/ready", timeout=5)
                    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
                    # Within the grace a balancer that has not noticed yet is still served
                    # (the answer may come after the grace: it was accepted within it).
                    served = httpx.post(url, json=short, timeout=30)
                    assert served.status_code == 200, served.text
                    time.sleep(max(0.0, grace_s - (time.monotonic() - signalled)) + 0.5)
                # Past the grace: refused (the listener is closed: a balancer retries elsewhere).
                with pytest.raises(httpx.ConnectError):
                    httpx.post(url, json=short, timeout=5)
        # The stream that was running at the signal still ran to its end.
        assert payloads[-1] == "[DONE]"
        finish = json.loads(payloads[-2])
        assert finish["choices"][0]["finish_reason"] == "length"
        content = [json.loads(p) for p in payloads[1:-2]]
        assert len(content) == 150
        assert server.process.wait(timeout=120) in (0, -signal.SIGTERM)
        assert not pid_exists(worker_pid)
        log = server.log()
        assert "draining: /ready answers 503" in log
        assert "drain grace over: new requests are refused" in log
