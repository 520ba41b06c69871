"""Settings come from SLMSERVE_* variables and flags; a flag wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import cli
from app.settings import ServerSettings


def test_environment_variables_configure_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMSERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("SLMSERVE_PORT", "9001")
    monkeypatch.setenv("SLMSERVE_MODELS", "/etc/slm/models.yaml")
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.models) == (
        "0.0.0.0",
        9001,
        Path("/etc/slm/models.yaml"),
    )


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLMSERVE_PORT", "9001")
    served: list[ServerSettings] = []

    def fake_serve(settings: ServerSettings) -> int:
        served.append(settings)
        return 0

    monkeypatch.setattr(cli, "serve", fake_serve)
    assert cli.main(["serve", "--port", "9100", "--log-format", "json"]) == 0
    assert served[0].port == 9100
    assert served[0].log_format == "json"


def test_invalid_models_file_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda level, fmt: None)
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - name: x\n    engine: tensorflow\n    path: a\n")
    assert cli.serve(ServerSettings(models=bad)) == 2
    assert cli.serve(ServerSettings(models=tmp_path / "missing.yaml")) == 2
