"""State that outlives a request: stored Responses (SQLite by default)."""

from __future__ import annotations

from app.settings import ServerSettings


class ResponseStore:
    """Stored responses and their input items."""

    def close(self) -> None:
        """Release the database."""


def open_response_store(settings: ServerSettings) -> ResponseStore:
    """The store the settings name."""
    return ResponseStore()
