"""How many CPU threads a model should use by default, inside containers too.

os.cpu_count() is the machine's count: in a container limited to 2 CPUs on a 64-core node,
llama.cpp would start 64 threads whose barriers then spin on 2 CPUs' worth of time.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_quota(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """Whole CPUs granted by a cgroup v2 CPU limit (at least 1); None when there is no limit."""
    try:
        quota, period = cpu_max.read_text().split()
        if quota == "max":
            return None
        # Rounded down: a thread more than the quota gets throttled mid-step.
        return max(1, int(quota) // int(period))
    except (OSError, ValueError):
        return None


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on (its affinity), capped by the cgroup CPU limit."""
    count = len(os.sched_getaffinity(0))
    quota = cpu_quota(cpu_max)
    return count if quota is None else min(count, quota)
