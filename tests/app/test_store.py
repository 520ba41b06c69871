"""The SQLite response store alone: put, get, delete, input items, pruning, reopening."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.settings import ServerSettings
from app.store import STORE_FILE, SqliteResponseStore, open_response_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def response(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "output": [{"type": "message", "t": "é"}]}


def items(*texts: str) -> list[dict[str, Any]]:
    return [
        {"id": f"msg_{text}", "type": "message", "role": "user", "text": text} for text in texts
    ]


def store_at(
    path: Path | None, clock: Clock | None = None, retention_s: float = 3600, max_count: int = 100
) -> SqliteResponseStore:
    return SqliteResponseStore(
        path, retention_s=retention_s, max_count=max_count, clock=clock or Clock()
    )


def rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT id FROM responses ORDER BY id")]


@pytest.mark.parametrize("in_memory", [False, True])
async def test_put_get_input_items_delete(tmp_path: Path, in_memory: bool) -> None:
    store = store_at(None if in_memory else tmp_path / "r.sqlite3")
    try:
        assert await store.get("resp_1") is None
        await store.put(response("resp_1"), items("a", "b"))
        await store.put(response("resp_2"), [])
        assert await store.get("resp_1") == response("resp_1")
        assert await store.input_items("resp_1") == items("a", "b")
        assert await store.input_items("resp_2") == []
        assert await store.input_items("resp_3") is None
        # Storing the same id again replaces it.
        await store.put(response("resp_1"), items("c"))
        assert await store.input_items("resp_1") == items("c")
        assert await store.delete("resp_1") is True
        assert await store.delete("resp_1") is False
        assert await store.get("resp_1") is None
        assert await store.input_items("resp_1") is None
        assert await store.get("resp_2") == response("resp_2")
    finally:
        store.close()


async def test_responses_expire_and_are_pruned_by_age(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    clock = Clock()
    store = store_at(path, clock, retention_s=100)
    try:
        await store.put(response("old"), [])
        clock.now += 60
        await store.put(response("newer"), [])
        clock.now += 50  # "old" is 110 s old: past retention, though still in the file
        assert await store.get("old") is None
        assert await store.input_items("old") is None
        assert await store.delete("old") is False
        assert await store.get("newer") == response("newer")
        assert rows(path) == ["newer", "old"]
        await store.put(response("newest"), [])  # a write prunes
        assert rows(path) == ["newer", "newest"]
    finally:
        store.close()


async def test_the_newest_are_kept_up_to_the_count(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    clock = Clock()
    store = store_at(path, clock, max_count=3)
    try:
        for index in range(5):
            clock.now += 1
            await store.put(response(f"r{index}"), items(str(index)))
        assert rows(path) == ["r2", "r3", "r4"]
        assert await store.get("r1") is None
        # Equal times: the later write is the newer one.
        await store.put(response("r5"), [])
        await store.put(response("r6"), [])
        assert rows(path) == ["r4", "r5", "r6"]
    finally:
        store.close()


async def test_responses_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "r.sqlite3"
    first = store_at(path)
    await first.put(response("resp_1"), items("a"))
    first.close()
    second = store_at(path)
    try:
        assert await second.get("resp_1") == response("resp_1")
        assert await second.input_items("resp_1") == items("a")
    finally:
        second.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_only_a_write_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "r.sqlite3"
    store = store_at(path)
    try:
        assert await store.get("resp_1") is None
        assert await store.input_items("resp_1") is None
        assert await store.delete("resp_1") is False
        assert not path.parent.exists()
        await store.put(response("resp_1"), [])
        assert path.is_file()
    finally:
        store.close()


async def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = store_at(tmp_path / "r.sqlite3")
    await store.put(response("resp_1"), [])
    store.close()
    store.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("resp_1")


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version=99")
    connection.close()
    store = store_at(path)
    try:
        with pytest.raises(RuntimeError, match="newer slmserve"):
            await store.put(response("resp_1"), [])
    finally:
        store.close()


def test_the_settings_choose_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def path_of(**settings: Any) -> Path | None:
        store = open_response_store(ServerSettings(**settings))
        assert isinstance(store, SqliteResponseStore)
        return store.path

    assert path_of(data_dir=tmp_path) == tmp_path / STORE_FILE
    assert path_of(response_store=f"sqlite:{tmp_path}/x.db") == tmp_path / "x.db"
    assert path_of(response_store="memory") is None
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert path_of() == tmp_path / "xdg" / "slmserve" / STORE_FILE
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert path_of() == tmp_path / "home" / ".local" / "share" / "slmserve" / STORE_FILE
    with pytest.raises(ValidationError):
        ServerSettings(response_store="redis://localhost")
