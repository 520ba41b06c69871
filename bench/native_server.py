"""llama.cpp's own C++ `llama-server`, built from the llama.cpp that the pinned llama-cpp-python
vendors: the peer of record, on exactly the llama.cpp build slmserve runs.

The sources come from the llama-cpp-python sdist on PyPI (`pip download --no-binary`); the
binary is built once (about 6 minutes on 2 cores) and cached under ~/.cache/slmserve, keyed by
the llama-cpp-python version.

Usage: python -m bench.native_server  (builds if needed, prints the binary's path)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slmserve"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    # One self-contained binary: the build folder (and its shared libraries) is thrown away.
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def binary_path(version: str | None = None) -> Path:
    version = version or metadata.version("llama-cpp-python")
    return CACHE / f"llama-server-{version}-static" / "llama-server"


def _sources(version: str, work: Path) -> Path:
    """The llama.cpp tree vendored in the llama-cpp-python sdist."""
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, f"llama-cpp-python=={version}", "--dest", str(work)], check=True)
    [archive] = work.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return work / archive.name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"


def build(version: str | None = None) -> Path:
    """The cached llama-server binary, built first if it is not there."""
    version = version or metadata.version("llama-cpp-python")
    target = binary_path(version)
    if target.is_file():
        return target
    if shutil.which("cmake") is None:
        raise RuntimeError("building llama-server needs cmake (apt-get install cmake)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    with tempfile.TemporaryDirectory(prefix="llama-server-") as scratch:
        source = _sources(version, Path(scratch))
        build_dir = source / "build"
        _log(f"building llama-server from llama.cpp vendored in llama-cpp-python {version}")
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_OPTIONS],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        jobs = str(os.cpu_count() or 2)
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", jobs],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "bin" / "llama-server", target)
    return target


def command(
    binary: Path, model: Path, port: int, *, context_per_slot: int, slots: int, threads: int
) -> list[str]:
    """llama-server with the slots, context and threads slmserve gets (its -c is the total)."""
    return [
        str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(slots), "-c", str(context_per_slot * slots),
        "-t", str(threads), "-tb", str(threads), "--no-webui",
    ]  # fmt: skip


if __name__ == "__main__":
    print(build())
