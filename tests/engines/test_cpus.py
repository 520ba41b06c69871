"""Default thread counts follow container CPU limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engines.cpus import available_cpus, cpu_quota


def cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000\n", 1),  # 1.5 CPUs: one thread, a second would be throttled
        ("50000 100000\n", 1),  # half a CPU still runs one thread
        ("garbage\n", None),
    ],
)
def test_cpu_quota_reads_cgroup_v2_limits(tmp_path: Path, text: str, expected: int | None) -> None:
    assert cpu_quota(cpu_max(tmp_path, text)) == expected


def test_no_cgroup_file_means_no_limit(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "absent") is None
    assert available_cpus(tmp_path / "absent") == len(os.sched_getaffinity(0))


def test_available_cpus_is_capped_by_the_quota(tmp_path: Path) -> None:
    assert available_cpus(cpu_max(tmp_path, "100000 100000")) == 1
    many = cpu_max(tmp_path, "10000000 100000")  # 100 CPUs: the affinity is the cap
    assert available_cpus(many) == len(os.sched_getaffinity(0))
