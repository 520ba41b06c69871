"""Start the servers under test as subprocesses, wait until they answer, always stop them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve(command: list[str], ready_url: str, log_path: Path) -> Iterator[None]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited early; see {log_path}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready_url} not ready; see {log_path}")
            time.sleep(0.2)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def slmserve_command(models_file: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "app.cli", "serve", "--port", str(port),
        "--models", str(models_file), "--log-level", "warning",
    ]  # fmt: skip


def peer_command(model_path: Path, port: int, context: int) -> list[str]:
    """llama-cpp-python's own server, configured as its docs advise for a fair comparison."""
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
        "--port", str(port), "--host", "127.0.0.1", "--n_ctx", str(context),
        "--n_threads", "2", "--logits_all", "false", "--interrupt_requests", "false",
        "--verbose", "false",
    ]  # fmt: skip
