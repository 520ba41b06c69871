"""Real services on free loopback ports for the tests: redis-server, HAProxy, Prometheus.

Each is a context manager that starts the Debian binary (the Makefile installs it; a missing one
fails, never skips), waits until it answers, and always stops it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import free_port


def require_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: `make test-tools` installs it (Debian package)")
    return path


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port}:\n{log.read_text(errors='replace')}")


@contextmanager
def _running(
    command: list[str], log_path: Path, port: int, what: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    environment = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        _wait_for_port(port, process, log_path, what)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def run_redis(directory: Path) -> Iterator[str]:
    """A throwaway redis-server (no persistence); yields its URL (database 0)."""
    binary = require_binary("redis-server")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    with _running(command, directory / "redis.log", port, "redis-server"):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def run_haproxy(
    config: Path, port: int, log_path: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy on `config` (checked first with -c) with `env` (its addresses), in the
    foreground, listening on `port`."""
    binary = require_binary("haproxy")
    check = subprocess.run(
        [binary, "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert check.returncode == 0, f"haproxy -c failed:\n{check.stdout}\n{check.stderr}"
    command = [binary, "-db", "-f", str(config)]
    with _running(command, log_path, port, "haproxy", env) as process:
        yield process


@contextmanager
def run_prometheus(config: Path, directory: Path) -> Iterator[str]:
    """Prometheus on `config`; yields its base URL once its API answers."""
    binary = require_binary("prometheus")
    port = free_port()
    command = [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}"]
    command += [f"--web.listen-address=127.0.0.1:{port}"]
    with _running(command, directory / "prometheus.log", port, "prometheus"):
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
