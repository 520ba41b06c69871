"""Execution providers for ONNX Runtime GenAI: which one `auto` means, and runtime packaging.

onnxruntime-genai ships as three wheels (CPU, CUDA, DirectML) that install the same Python
module, so exactly one may be present in an environment; this module says which is, and
refuses to guess when several are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from engines.errors import ModelLoadError

RUNTIME_DISTRIBUTIONS = {
    "onnxruntime-genai": "cpu",
    "onnxruntime-genai-cuda": "cuda",
    "onnxruntime-genai-directml": "directml",
}
INSTALL_HINT = (
    "install exactly one ONNX Runtime GenAI build: pip install 'slmserve[cpu]' "
    "(or 'slmserve[cuda]' for NVIDIA GPUs, 'slmserve[directml]' on Windows)"
)


@dataclass(frozen=True)
class AvailabilityProbes:
    """How to ask the runtime what it can use (substituted in tests)."""

    cuda: Callable[[], bool]
    dml: Callable[[], bool]


def resolve_provider(requested: str, probes: AvailabilityProbes) -> str:
    """`auto` becomes cuda if available, then dml, else cpu; explicit choices stay as asked
    (an unavailable one then fails at load with the runtime's own message)."""
    if requested != "auto":
        return requested
    if probes.cuda():
        return "cuda"
    if probes.dml():
        return "dml"
    return "cpu"


def installed_runtimes() -> list[str]:
    """The onnxruntime-genai distributions installed in this environment."""
    found = []
    for distribution in RUNTIME_DISTRIBUTIONS:
        try:
            metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
        found.append(distribution)
    return found


def check_single_runtime(installed: list[str]) -> None:
    """Fail clearly when no build, or more than one build, of the runtime is installed."""
    if not installed:
        raise ModelLoadError(f"onnxruntime-genai is not installed; {INSTALL_HINT}")
    if len(installed) > 1:
        raise ModelLoadError(
            f"several onnxruntime-genai builds are installed ({', '.join(installed)}); they "
            f"overwrite one another's module. Uninstall all of them, then {INSTALL_HINT}"
        )
