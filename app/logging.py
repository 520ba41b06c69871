"""Structured logging for the server process (uvicorn's loggers included)."""

from __future__ import annotations

import logging
import sys

from engines.log_format import LogFormat, formatter


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every log record (ours, uvicorn's, the workers' forwarders) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
