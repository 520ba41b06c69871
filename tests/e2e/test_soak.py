"""A short soak in `make test`: mixed requests, clients hanging up, nothing lost or held."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.soak import run_soak, soak_models
from tests.e2e.server import run_server


async def test_short_soak_loses_nothing_and_leaves_no_slot_held(tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": soak_models()}))
    with run_server(models_file, tmp_path / "server.log") as server:
        report = await run_soak(server.base_url, ["gguf", "onnx"], total=120, concurrency=16)
    assert report.sent == 120
    assert report.lost == 0
    assert report.errors == {}
    assert report.held_slots_after == 0
    assert report.outcomes["left mid-stream (on purpose)"] > 0
    assert report.outcomes["ok stream"] > 0
    assert report.outcomes["ok non-stream"] > 0
