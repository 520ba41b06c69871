"""Server settings: environment (`SLMSERVE_*`) and command-line flags, one definition.

The models themselves live in the models file (engines/config.py); these are the settings of the
process that serves them. Every field's description is its documentation and its --help text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLMSERVE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on.")
    models: Path = Field(
        default=Path("models.yaml"),
        description="The models file (YAML) listing the models to serve.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level of log records written."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="`text` for people, `json` (one object per line) for tools."
    )
    api_key: str | None = Field(
        default=None,
        description="API key(s) clients must send as 'Authorization: Bearer KEY', "
        "comma-separated; unset (and no key file): the API is open.",
    )
    api_key_file: Path | None = Field(
        default=None, description="A file of API keys, one per line ('#' starts a comment)."
    )
    metrics_require_api_key: bool = Field(
        default=False, description="Whether /metrics also needs an API key (when keys are set)."
    )
