"""Execution provider choice and the one-runtime-per-environment rule."""

from __future__ import annotations

import pytest

from engines.errors import ModelLoadError
from engines.providers import (
    AvailabilityProbes,
    check_single_runtime,
    installed_runtimes,
    resolve_provider,
)


def probes(cuda: bool, dml: bool) -> AvailabilityProbes:
    return AvailabilityProbes(cuda=lambda: cuda, dml=lambda: dml)


@pytest.mark.parametrize(
    ("cuda", "dml", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "dml"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_dml_then_cpu(cuda: bool, dml: bool, expected: str) -> None:
    assert resolve_provider("auto", probes(cuda, dml)) == expected


@pytest.mark.parametrize("explicit", ["cpu", "cuda", "dml"])
def test_explicit_providers_are_kept_even_when_unavailable(explicit: str) -> None:
    assert resolve_provider(explicit, probes(False, False)) == explicit


def test_this_environment_has_exactly_the_cpu_runtime() -> None:
    assert installed_runtimes() == ["onnxruntime-genai"]
    check_single_runtime(installed_runtimes())


def test_missing_or_doubled_runtimes_are_explained() -> None:
    with pytest.raises(ModelLoadError, match=r"pip install 'slmserve\[cpu\]'"):
        check_single_runtime([])
    with pytest.raises(ModelLoadError, match="overwrite one another"):
        check_single_runtime(["onnxruntime-genai", "onnxruntime-genai-cuda"])
