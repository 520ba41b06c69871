"""Fleet tier (`make test-fleet`): replicas behind a real HAProxy, a shared real Redis, a real
Prometheus. The Makefile installs the Debian packages first; a missing one fails, never skips."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.fleet)
