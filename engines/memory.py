"""Memory facts for the pool: what a worker really uses, and a first guess before it loads."""

from __future__ import annotations

from pathlib import Path

import psutil


def resident_bytes(pid: int | None) -> int | None:
    """The resident set size of a process, or None if there is no such process."""
    if pid is None:
        return None
    try:
        rss: int = psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return rss


def model_files_bytes(path: Path) -> int:
    """Size on disk of a model file or folder: the first estimate of its memory before a load."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())
    return 0
