"""The response stores alone, SQLite and a real redis-server: put, get, delete, input items,
pruning by age and count; SQLite's file (reopening, WAL, schema) and Redis's TTLs on their own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from app.settings import ServerSettings
from app.store import (
    REDIS_PREFIX,
    STORE_FILE,
    RedisResponseStore,
    ResponseStore,
    SqliteResponseStore,
    open_response_store,
)
from tests.fleet.services import run_redis


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


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


class Backend:
    """Makes stores of one kind and lists the ids it really holds (expired ones included)."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.kind = kind
        self.path = tmp_path / "r.sqlite3"
        self.redis_url = redis_url
        self._stores: list[ResponseStore] = []

    def store(
        self, clock: Clock | None = None, retention_s: float = 3600, max_count: int = 100
    ) -> ResponseStore:
        store: ResponseStore
        if self.redis_url is not None:
            store = RedisResponseStore(
                self.redis_url, retention_s=retention_s, max_count=max_count, clock=clock or Clock()
            )
        else:
            path = None if self.kind == "sqlite-memory" else self.path
            store = store_at(path, clock, retention_s, max_count)
        self._stores.append(store)
        return store

    def stored_ids(self) -> list[str]:
        if self.redis_url is None:
            return rows(self.path)
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            indexed = {str(member) for member in client.zrange(REDIS_PREFIX + "index", 0, -1)}
            held = {str(key).removeprefix(REDIS_PREFIX + "r:") for key in client.keys("*:r:*")}
        finally:
            client.close()
        assert indexed == held, "the index and the stored hashes agree"
        return sorted(held)

    def close(self) -> None:
        for store in self._stores:
            store.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url: str | None = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
    made = Backend(request.param, tmp_path, url)
    try:
        yield made
    finally:
        made.close()


def rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT id FROM responses ORDER BY id")]


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-memory", "redis"])
async def test_put_get_input_items_delete(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    if url is not None:
        redis.Redis.from_url(url).flushdb()
    store = Backend(kind, tmp_path, url).store()
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


async def test_responses_expire_and_are_pruned_by_age(backend: Backend) -> None:
    clock = Clock()
    store = backend.store(clock, retention_s=100)
    try:
        await store.put(response("old"), [])
        clock.now += 60
        await store.put(response("newer"), [])
        clock.now += 50  # "old" is 110 s old: past retention, though still in the file
        assert await store.get("old") is None
        assert await store.input_items("old") is None
        assert backend.stored_ids() == ["newer", "old"]
        assert await store.delete("old") is False
        assert await store.get("newer") == response("newer")
        await store.put(response("newest"), [])  # a write prunes
        assert backend.stored_ids() == ["newer", "newest"]
    finally:
        store.close()


async def test_the_newest_are_kept_up_to_the_count(backend: Backend) -> None:
    clock = Clock()
    store = backend.store(clock, max_count=3)
    try:
        for index in range(5):
            clock.now += 1
            await store.put(response(f"r{index}"), items(str(index)))
        assert backend.stored_ids() == ["r2", "r3", "r4"]
        assert await store.get("r1") is None
        # Equal times: SQLite keeps the later writes; Redis orders equal times by id (real
        # clocks rarely tie).
        await store.put(response("r5"), [])
        await store.put(response("r6"), [])
        assert backend.stored_ids() == ["r4", "r5", "r6"]
        assert await store.input_items("r4") == items("4")
    finally:
        store.close()


async def test_a_response_stored_by_one_replica_is_read_by_another(backend: Backend) -> None:
    replica_a, replica_b = backend.store(), backend.store()
    await replica_a.put(response("resp_a"), items("a"))
    assert await replica_b.get("resp_a") == response("resp_a")
    assert await replica_b.input_items("resp_a") == items("a")
    assert await replica_b.delete("resp_a") is True
    assert await replica_a.get("resp_a") is None


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


async def test_a_closed_store_refuses_work(backend: Backend) -> None:
    store = backend.store()
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
    for wrong in ("redis", "redis:", "postgres://localhost", "sqlite:"):
        with pytest.raises(ValidationError):
            ServerSettings(response_store=wrong)


def test_a_redis_url_chooses_redis_with_the_same_retention(redis_url: str) -> None:
    store = open_response_store(
        ServerSettings(response_store=redis_url, response_retention_s=50, response_max_count=7)
    )
    try:
        assert isinstance(store, RedisResponseStore)
        assert (store._retention_s, store._max_count) == (50, 7)
    finally:
        store.close()


async def test_redis_expires_responses_by_itself(redis_url: str) -> None:
    """Redis deletes an expired response even when nobody writes again (a TTL per key)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    store = RedisResponseStore(redis_url, retention_s=0.3, max_count=10)
    try:
        await store.put(response("brief"), items("a"))
        key = REDIS_PREFIX + "r:brief"
        assert 0 < client.pttl(key) <= 300
        assert 0 < client.pttl(REDIS_PREFIX + "index") <= 300
        assert await store.get("brief") == response("brief")
        await asyncio.sleep(0.5)
        assert not client.exists(key)
        assert await store.get("brief") is None
    finally:
        store.close()
        client.close()


async def test_redis_unreachable_is_an_error_not_a_missing_response() -> None:
    store = RedisResponseStore("redis://127.0.0.1:1/0", retention_s=10, max_count=10)
    try:
        with pytest.raises(redis.ConnectionError):
            await store.get("resp_1")
    finally:
        store.close()
