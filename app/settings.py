"""Server settings: environment (`SLMSERVE_*`) and command-line flags, one definition.

The models themselves live in the models file (engines/config.py); these are the settings of the
process that serves them. Every field's description is its documentation and its --help text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Lists given as "a,b,c" in the environment or on the command line (JSON is accepted too).
CommaList = Annotated[list[str], NoDecode]


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
    admin_key: str | None = Field(
        default=None,
        description="Admin key(s) for /admin/* (load, unload a model), sent as "
        "'Authorization: Bearer KEY', comma-separated; an API key does not open /admin/*, nor "
        "an admin key /v1/. Unset (and no key file): /admin/* answers only when listening on a "
        "loopback address (then under the API key rule), 403 otherwise.",
    )
    admin_key_file: Path | None = Field(
        default=None, description="A file of admin keys, one per line ('#' starts a comment)."
    )
    metrics_require_api_key: bool = Field(
        default=False, description="Whether /metrics also needs an API key (when keys are set)."
    )
    cors_allow_origins: CommaList = Field(
        default_factory=list,
        description="Origins browsers may call the API from (comma-separated; '*' for any); "
        "empty: no CORS headers.",
    )
    cors_allow_methods: CommaList = Field(
        default_factory=lambda: ["GET", "POST", "OPTIONS"],
        description="HTTP methods allowed for cross-origin calls.",
    )
    cors_allow_headers: CommaList = Field(
        default_factory=lambda: ["Authorization", "Content-Type"],
        description="Request headers allowed for cross-origin calls.",
    )
    max_request_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    max_tokens_cap: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens one request may ask to generate (400 beyond), and the limit "
        "for requests that ask for none; unset: up to the model's context.",
    )
    max_messages: int = Field(
        default=1024, ge=1, description="Most messages one chat request may carry (400 beyond)."
    )
    log_prompts: bool = Field(
        default=False,
        description="Log each request's messages and generated text (off: only sizes and "
        "timings are logged).",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Directory for state that outlives a request (the response store's SQLite "
        "file, created when the first response is stored); unset: $XDG_DATA_HOME/slmserve, "
        "else ~/.local/share/slmserve. In a container, point it at a volume.",
    )
    response_store: str = Field(
        default="sqlite",
        pattern=r"^(sqlite(:.+)?|memory|rediss?://.+)$",
        description="Where stored Responses (/v1/responses with store=true) live: `sqlite` (the "
        "file responses.sqlite3 in data_dir), `sqlite:PATH` (that file), `memory` (gone at "
        "restart), or `redis://HOST:PORT/DB` (`rediss://` for TLS): one Redis shared by "
        "several replicas, so a conversation continues on any of them.",
    )
    response_retention_s: float = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        description="How long a stored response can be retrieved or continued "
        "(previous_response_id); older ones are deleted.",
    )
    response_max_count: int = Field(
        default=10_000,
        ge=1,
        description="Most stored responses kept; storing one more deletes the oldest.",
    )
    drain_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="On SIGTERM: /ready answers 503 at once, but new requests are still "
        "served for this long (the time a load balancer needs to see /ready fail and stop "
        "sending); then new requests get 503 shutting_down. A second signal, or SIGINT, ends "
        "it early.",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, after the grace (drain_grace_s): how long in-flight requests "
        "may take to finish before the server stops anyway.",
    )

    @field_validator(
        "cors_allow_origins", "cors_allow_methods", "cors_allow_headers", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    def data_directory(self) -> Path:
        """`data_dir`, or the per-user default ($XDG_DATA_HOME/slmserve)."""
        if self.data_dir is not None:
            return self.data_dir
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "slmserve"
