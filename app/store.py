"""State that outlives a request: stored Responses (SQLite by default, Redis for a fleet).

`ResponseStore` is the whole interface the Responses adapter uses (put, get, input items,
delete, close); SQLite (one file per replica) and Redis (shared by several replicas, so a
conversation continues on whichever replica the load balancer picks) implement it.

Each stored response is self-contained: its row holds the response object and every input item
needed to continue from it (earlier turns, this turn's input), so deleting or expiring an older
response of a chain never breaks a newer one. A chain repeats its history in every row; rows are
bounded by the model's context (what does not fit is refused, or dropped with truncation=auto
before it is stored), and the store by age and count.

SQLite: one file, WAL mode (readers never wait for the writer; a commit does not wait for an
fsync with synchronous=NORMAL), created when the first response is stored, so a server that
never stores one writes nothing. Calls run in a worker thread (`asyncio.to_thread`) behind one
lock: a query is sub-millisecond, but a row can hold a whole conversation and a WAL checkpoint
does fsync, and the event loop serves every other stream meanwhile.

Redis: one hash per response (its JSON, its input items, when it was stored) that Redis itself
expires after the retention time, plus a sorted set of ids by time that every write trims by age
and count in one Lua script (atomic, so replicas writing at once never overshoot). Keys share
the hash tag `{responses}`, so the script's keys sit in one slot. The synchronous client runs in
a worker thread like SQLite's calls; it connects on the first call and reconnects by itself.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis

from app.settings import ServerSettings

log = logging.getLogger("slmserve.store")

T = TypeVar("T")
Json = dict[str, Any]

STORE_FILE = "responses.sqlite3"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    stored_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (stored_at);
"""


class ResponseStore(abc.ABC):
    """Stored responses and their input items, each kept for a bounded time."""

    @abc.abstractmethod
    async def put(self, response: Json, input_items: list[Json]) -> None:
        """Keep `response` (its `id` is the key) with the items it continues from."""

    @abc.abstractmethod
    async def get(self, response_id: str) -> Json | None:
        """The stored response object; None when unknown, deleted or expired."""

    @abc.abstractmethod
    async def input_items(self, response_id: str) -> list[Json] | None:
        """The response's input items, oldest first; None when unknown, deleted or expired."""

    @abc.abstractmethod
    async def delete(self, response_id: str) -> bool:
        """Forget a response; whether it was there."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the database."""


class SqliteResponseStore(ResponseStore):
    """Responses in one SQLite file (or in memory), pruned by age and count on every write."""

    def __init__(
        self,
        path: Path | None,
        *,
        retention_s: float,
        max_count: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path  # None: in memory
        self._retention_s = retention_s
        self._max_count = max_count
        self._clock = clock
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    @property
    def path(self) -> Path | None:
        return self._path

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """The connection; None when there is no database yet and `create` is false."""
        if self._connection is not None:
            return self._connection
        if self._path is not None:
            if not create and not self._path.exists():
                return None
            self._path.parent.mkdir(parents=True, exist_ok=True)
            log.info("response store: %s", self._path)
        connection = sqlite3.connect(
            ":memory:" if self._path is None else str(self._path), check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            # Another process on the same file (a second server) writes: wait, do not fail.
            connection.execute("PRAGMA busy_timeout=5000")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self._path} was written by a newer slmserve (schema {version}); "
                    f"this one reads schema {SCHEMA_VERSION}"
                )
            connection.executescript(_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _run(self, work: Callable[[sqlite3.Connection], T], absent: T, create: bool) -> T:
        """`work` in one transaction (committed, or rolled back on an error); `absent` when
        there is no database yet and `work` would not create it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the response store is closed")
            connection = self._connect(create)
            if connection is None:
                return absent
            with connection:
                return work(connection)

    async def _if_any(self, work: Callable[[sqlite3.Connection], T], absent: T) -> T:
        """`work` on the database if there is one yet, else `absent`."""
        return await asyncio.to_thread(self._run, work, absent, False)

    def _cutoff(self) -> float:
        return self._clock() - self._retention_s

    async def put(self, response: Json, input_items: list[Json]) -> None:
        def put(connection: sqlite3.Connection) -> None:
            row = (response["id"], self._clock(), json.dumps(response), json.dumps(input_items))
            connection.execute(
                "INSERT OR REPLACE INTO responses (id, stored_at, response, input_items) "
                "VALUES (?, ?, ?, ?)",
                row,
            )
            connection.execute("DELETE FROM responses WHERE stored_at < ?", (self._cutoff(),))
            connection.execute(
                "DELETE FROM responses WHERE rowid IN (SELECT rowid FROM responses "
                "ORDER BY stored_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (self._max_count,),
            )

        await asyncio.to_thread(self._run, put, None, True)

    async def _column(self, column: Literal["response", "input_items"], response_id: str) -> Any:
        def read(connection: sqlite3.Connection) -> Any:
            found = connection.execute(
                f"SELECT {column} FROM responses WHERE id = ? AND stored_at >= ?",
                (response_id, self._cutoff()),
            ).fetchone()
            return None if found is None else json.loads(found[0])

        return await self._if_any(read, None)

    async def get(self, response_id: str) -> Json | None:
        found: Json | None = await self._column("response", response_id)
        return found

    async def input_items(self, response_id: str) -> list[Json] | None:
        found: list[Json] | None = await self._column("input_items", response_id)
        return found

    async def delete(self, response_id: str) -> bool:
        def delete(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "DELETE FROM responses WHERE id = ? AND stored_at >= ?",
                (response_id, self._cutoff()),
            )
            return cursor.rowcount > 0

        return await self._if_any(delete, False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None


REDIS_PREFIX = "slmserve:{responses}:"

# KEYS[1]: the response's hash, KEYS[2]: the index (ids by time). ARGV: id, now, cutoff,
# max_count, ttl_ms, response JSON, input items JSON, the hashes' key prefix. Stores, then
# trims the index (and the hashes it names) by age and count.
_REDIS_PUT = """
redis.call('HSET', KEYS[1], 'stored_at', ARGV[2], 'response', ARGV[6], 'input_items', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
for _, id in ipairs(gone) do redis.call('DEL', ARGV[8] .. id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
        redis.call('DEL', ARGV[8] .. id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
"""

# KEYS[1]: the response's hash, KEYS[2]: the index. ARGV: id, cutoff. 1 when it was there.
_REDIS_DELETE = """
local stored_at = redis.call('HGET', KEYS[1], 'stored_at')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if stored_at and tonumber(stored_at) >= tonumber(ARGV[2]) then return 1 end
return 0
"""


class RedisResponseStore(ResponseStore):
    """Responses in a Redis shared by several replicas, expired by age and trimmed by count."""

    def __init__(
        self,
        url: str,
        *,
        retention_s: float,
        max_count: int,
        clock: Callable[[], float] = time.time,
        prefix: str = REDIS_PREFIX,
    ) -> None:
        self._retention_s = retention_s
        self._max_count = max_count
        self._clock = clock
        self._prefix = prefix
        self._index = prefix + "index"
        self._client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10
        )
        self._put_script = self._client.register_script(_REDIS_PUT)
        self._delete_script = self._client.register_script(_REDIS_DELETE)
        self._closed = False
        where = self._client.connection_pool.connection_kwargs
        log.info(
            "response store: redis at %s:%s/%s",
            where.get("host", "?"),
            where.get("port", "?"),
            where.get("db", 0),
        )

    def _key(self, response_id: str) -> str:
        return f"{self._prefix}r:{response_id}"

    def _cutoff(self) -> float:
        return self._clock() - self._retention_s

    async def _call(self, work: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the response store is closed")
        return await asyncio.to_thread(work)

    async def put(self, response: Json, input_items: list[Json]) -> None:
        response_id = response["id"]
        args = [
            response_id,
            repr(self._clock()),
            repr(self._cutoff()),
            self._max_count,
            max(1, round(self._retention_s * 1000)),
            json.dumps(response),
            json.dumps(input_items),
            self._key(""),
        ]
        keys = [self._key(response_id), self._index]
        await self._call(lambda: self._put_script(keys=keys, args=args))

    async def _field(self, field: Literal["response", "input_items"], response_id: str) -> Any:
        found = await self._call(
            lambda: self._client.hmget(self._key(response_id), ["stored_at", field])
        )
        stored_at, value = found
        if stored_at is None or value is None or float(stored_at) < self._cutoff():
            return None
        return json.loads(value)

    async def get(self, response_id: str) -> Json | None:
        found: Json | None = await self._field("response", response_id)
        return found

    async def input_items(self, response_id: str) -> list[Json] | None:
        found: list[Json] | None = await self._field("input_items", response_id)
        return found

    async def delete(self, response_id: str) -> bool:
        keys = [self._key(response_id), self._index]
        args = [response_id, repr(self._cutoff())]
        deleted = await self._call(lambda: self._delete_script(keys=keys, args=args))
        return bool(deleted)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()


def open_response_store(settings: ServerSettings) -> ResponseStore:
    """The store the settings name (`response_store`), bounded by the retention settings."""
    if settings.response_store.startswith(("redis://", "rediss://")):
        return RedisResponseStore(
            settings.response_store,
            retention_s=settings.response_retention_s,
            max_count=settings.response_max_count,
        )
    kind, _, where = settings.response_store.partition(":")
    path: Path | None
    if kind == "memory":
        path = None
    elif where:
        path = Path(where).expanduser()
    else:
        path = settings.data_directory() / STORE_FILE
    return SqliteResponseStore(
        path, retention_s=settings.response_retention_s, max_count=settings.response_max_count
    )
