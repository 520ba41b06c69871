"""Start the real server as a subprocess on a free port, and always stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def models(self) -> dict[str, dict[str, Any]]:
        cards = httpx.get(f"{self.base_url}/v1/models", timeout=10).json()["data"]
        return {card["id"]: card for card in cards}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_models(
    path: Path, models: list[dict[str, Any]], pool: dict[str, Any] | None = None
) -> Path:
    document: dict[str, Any] = {"models": models}
    if pool is not None:
        document["pool"] = pool
    path.write_text(yaml.safe_dump(document))
    return path


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_ready(
    base_url: str,
    timeout_s: float,
    log: Callable[[], str],
    exited: Callable[[], bool] = lambda: False,
) -> None:
    """Poll /ready until 200; a timeout or an early exit raises with the server's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited():
            raise RuntimeError(f"the server exited early:\n{log()}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the server was not ready after {timeout_s}s:\n{log()}")


def wait_until_ready(server: LiveServer, timeout_s: float) -> None:
    wait_for_ready(
        server.base_url, timeout_s, server.log, lambda: server.process.poll() is not None
    )


def wait_until_settled(server: LiveServer, timeout_s: float) -> httpx.Response:
    """Wait until no preloaded model is still loading; returns /ready's answer (200 or 503)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{server.base_url}/ready", timeout=2)
            if "loading" not in response.json()["models"].values():
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"models were still loading after {timeout_s}s:\n{server.log()}")


@contextmanager
def run_server(
    models_file: Path,
    log_path: Path,
    *,
    extra_args: tuple[str, ...] = (),
    wait_ready: bool = True,
    ready_timeout_s: float = 120,
) -> Iterator[LiveServer]:
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    command += ["--models", str(models_file), *extra_args]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if wait_ready:
            wait_until_ready(server, ready_timeout_s)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
