"""Deploy tier (`make test-deploy`): real tools (Prometheus, promtool, npm) on real servers.

The Makefile installs the tools first; a missing one is a failure here, never a skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.deploy)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make test-deploy`, which installs it")
    return path
