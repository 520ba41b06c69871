"""The CPU image for real: built by `make image` (podman, local base), run read-only as it would
be in Kubernetes, answering the openai client, draining on `podman stop`. Both Dockerfiles pass
hadolint, and share their Python install steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL_NAME, REPO
from tests.deploy.conftest import require_tool
from tests.e2e.server import free_port, write_models

IMAGE = os.environ.get("IMAGE", "localhost/slmserve:cpu")
DOCKERFILES = (REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cuda")


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # The containers.conf docker/build-local.sh builds with (runc, ulimits this kernel allows).
    env = {"CONTAINERS_CONF": str(REPO / "docker" / "podman.conf"), **os.environ}
    return subprocess.run(
        [require_tool("podman"), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_both_dockerfiles_pass_hadolint() -> None:
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    result = subprocess.run(
        [str(hadolint), *map(str, DOCKERFILES)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cuda_image_installs_python_like_the_cpu_image() -> None:
    """The CUDA image cannot be built here: its pip steps are the CPU image's, which is."""
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "COPY docker/install.sh /usr/local/bin/slmserve-install" in text
        assert 'EXTRAS="${EXTRAS}" slmserve-install' in text
        assert "pip install" not in text
    assert "ARG EXTRAS=cuda" in DOCKERFILES[1].read_text()
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in DOCKERFILES[1].read_text()


@dataclass
class Container:
    name: str
    base_url: str

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr


def wait_until_ready(container: Container, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{container.base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the container was not ready after {timeout_s}s:\n{container.logs()}")


@pytest.fixture
def container(default_model_path: Path, tmp_path: Path) -> Iterator[Container]:
    if podman("image", "exists", IMAGE).returncode != 0:
        pytest.fail(f"image {IMAGE} is missing: run `make image` (make test-deploy does)")
    model = {
        "name": DEFAULT_MODEL_NAME,
        "engine": "gguf",
        "path": f"/models/{default_model_path.name}",
        "context_length": 512,
        "parallel": 2,
    }
    models_file = write_models(tmp_path / "models.yaml", [model])
    models_file.chmod(0o644)
    name = f"slmserve-test-{os.getpid()}-{free_port()}"
    port = free_port()
    started = podman(
        "run", "--detach", "--name", name,
        # As the Helm chart runs it: read-only root filesystem, a tmpfs /tmp, no capabilities.
        "--read-only", "--cap-drop=ALL",
        # The image's HEALTHCHECK stays defined (run below); podman's timer needs systemd.
        "--health-interval=disable",
        "--publish", f"127.0.0.1:{port}:8000",
        "--volume", f"{default_model_path.parent}:/models:ro",
        "--volume", f"{models_file}:/etc/slmserve/models.yaml:ro",
        "--env", "SLMSERVE_DRAIN_TIMEOUT_S=30",
        IMAGE,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    running = Container(name, f"http://127.0.0.1:{port}")
    try:
        wait_until_ready(running, timeout_s=120)
        yield running
    finally:
        podman("rm", "--force", "--time", "0", name)


def test_container_serves_a_chat_completion_to_the_openai_client(container: Container) -> None:
    client = openai.OpenAI(base_url=f"{container.base_url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        temperature=0,
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    assert podman("healthcheck", "run", container.name).returncode == 0
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    # Structured logs, the workers' included: one JSON object per line.
    records = [json.loads(line) for line in container.logs().splitlines()]
    assert any(r["message"].startswith("ready:") for r in records)
    assert any(r["logger"] == "slmserve.worker" and "model" in r for r in records)


def test_podman_stop_lets_an_in_flight_stream_finish(container: Container) -> None:
    body = {
        "model": DEFAULT_MODEL_NAME,
        "messages": [{"role": "user", "content": "Write a very long story about dragons."}],
        "max_tokens": 150,
        "temperature": 0,
        "stream": True,
    }
    stopped: dict[str, float | int] = {}

    def stop() -> None:
        began = time.monotonic()
        result = podman("stop", "--time", "30", container.name, timeout=60)
        stopped["seconds"] = time.monotonic() - began
        stopped["returncode"] = result.returncode

    stopper = threading.Thread(target=stop)
    payloads: list[str] = []
    url = f"{container.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                payloads.append(line.removeprefix("data: "))
                if len(payloads) == 5:
                    stopper.start()
    stream_done = datetime.now(UTC)
    stopper.join(timeout=60)
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "length"
    assert len(payloads[1:-2]) == 150
    # It exited by itself once the stream was done, not killed when the 30 s ran out.
    assert stopped["returncode"] == 0
    assert stopped["seconds"] < 25
    state = json.loads(podman("inspect", container.name).stdout)[0]["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] in (0, 143), state
    # The stop reached the server while the stream was still running.
    (draining,) = [
        json.loads(line) for line in container.logs().splitlines() if "draining:" in line
    ]
    assert datetime.fromisoformat(draining["time"]) < stream_done
