"""The database: the source of truth for stored messages and for replay.

Peewee is synchronous, so every call runs on this store's own threads and the public methods
are coroutines: no caller can block an event loop on the database by mistake.

Deliberate choices:
- ``seq`` is the table's integer primary key. It must grow in *commit* order (SPEC §3), so
  writers serialise: SQLite takes its write lock at BEGIN (``BEGIN IMMEDIATE``), Postgres takes
  a transaction-scoped advisory lock before inserting, so a smaller ``seq`` can never commit
  after a larger one is visible.
- Saving is idempotent on the message id (``ON CONFLICT DO NOTHING``), so a job that runs
  twice stores one row, and the second run gets the first run's row back.
- Times are stored as the ISO 8601 text the API shows, so reads render rows without parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import peewee
from playhouse.db_url import parse as parse_db_url
from playhouse.pool import PooledPostgresqlDatabase

from .files import sqlite_path
from .messages import Message, utc_timestamp

T = TypeVar("T")

# Errors worth retrying: a locked SQLite file, a lost or refused Postgres connection.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (peewee.OperationalError, peewee.InterfaceError)

# Key of the Postgres advisory lock that orders writers (any constant shared by all writers).
_SEQ_LOCK_KEY = 0x5E9_10C4
_COLUMNS = "id, seq, payload, received_at, persisted_at"


class StoredMessage(peewee.Model):
    """The schema of the message table (queries below are plain SQL on the same columns)."""

    seq = peewee.BigAutoField()
    id = peewee.CharField(max_length=36, unique=True)
    payload = peewee.TextField()
    received_at = peewee.CharField(max_length=27)
    persisted_at = peewee.CharField(max_length=27)

    class Meta:
        table_name = "message"


def _open(url: str) -> Any:
    path = sqlite_path(url)
    if path is not None:
        return peewee.SqliteDatabase(
            path,
            pragmas={
                "journal_mode": "wal",
                # FULL: a commit is on disk before the worker acknowledges the job to Redis.
                "synchronous": "full",
                # Below the worker's store timeout, so a locked file becomes a retry, not a hang.
                "busy_timeout": 3000,
            },
            check_same_thread=False,
        )
    params = parse_db_url(url)
    return PooledPostgresqlDatabase(
        params.pop("database"),
        max_connections=16,
        stale_timeout=300,
        timeout=10,
        connect_timeout=5,
        **params,
    )


class Store:
    """A database opened from a URL, with async methods that run on its own threads."""

    def __init__(self, url: str, *, threads: int = 4) -> None:
        self.url = url
        self._db = _open(url)
        self._is_postgres = isinstance(self._db, peewee.PostgresqlDatabase)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._guarded, fn, *args))

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._is_postgres:
                # Borrow a pooled connection for this call only; the pool drops dead ones.
                with self._db.connection_context():
                    return fn(*args)
            # SQLite: each store thread keeps its own connection open (peewee connects on first
            # use), so a call does not pay for connecting and setting pragmas again.
            return fn(*args)
        except TRANSIENT_ERRORS:
            # A broken connection must not be reused by the next call on this thread.
            if not self._db.is_closed():
                with contextlib.suppress(Exception):
                    self._db.close()
            raise

    # Schema ---------------------------------------------------------------------------
    async def create_tables(self) -> None:
        """Create missing tables and indexes (idempotent; the ``release`` step)."""
        await self._call(self._create_tables)

    def _create_tables(self) -> None:
        with self._db.bind_ctx([StoredMessage]), self._db.atomic():
            if self._is_postgres:
                # Processes starting together must not race to create the same table.
                self._execute("SELECT pg_advisory_xact_lock(%s)", (_SEQ_LOCK_KEY,))
            self._db.create_tables([StoredMessage], safe=True)

    # Writes ---------------------------------------------------------------------------
    async def save(self, rows: Sequence[tuple[str, str, str]]) -> list[Message]:
        """Store ``(id, payload, received_at)`` rows in one transaction; return them stored."""
        return await self._call(self._save, rows)

    def _save(self, rows: Sequence[tuple[str, str, str]]) -> list[Message]:
        persisted_at = utc_timestamp()
        ids = [row[0] for row in rows]
        atomic = self._db.atomic() if self._is_postgres else self._db.atomic("IMMEDIATE")
        with atomic:
            if self._is_postgres:
                self._execute("SELECT pg_advisory_xact_lock(%s)", (_SEQ_LOCK_KEY,))
            p = self._param
            values = ", ".join([f"({p}, {p}, {p}, {p})"] * len(rows))
            self._execute(
                "INSERT INTO message (id, payload, received_at, persisted_at) "
                f"VALUES {values} ON CONFLICT (id) DO NOTHING",
                [value for row in rows for value in (*row, persisted_at)],
            )
            placeholders = ", ".join([p] * len(ids))
            cursor = self._execute(
                f"SELECT {_COLUMNS} FROM message WHERE id IN ({placeholders}) ORDER BY seq", ids
            )
            return [Message._make(row) for row in cursor.fetchall()]

    # Reads ----------------------------------------------------------------------------
    async def after(self, seq: int, limit: int, until: int | None = None) -> list[Message]:
        """Up to ``limit`` messages with ``seq`` greater than ``seq`` (and at most ``until``)."""
        return await self._call(self._after, seq, limit, until)

    def _after(self, seq: int, limit: int, until: int | None) -> list[Message]:
        p = self._param
        if until is None:
            sql = f"SELECT {_COLUMNS} FROM message WHERE seq > {p} ORDER BY seq LIMIT {p}"
            params: tuple[int, ...] = (seq, limit)
        else:
            sql = f"SELECT {_COLUMNS} FROM message WHERE seq > {p} AND seq <= {p} ORDER BY seq LIMIT {p}"
            params = (seq, until, limit)
        return [Message._make(row) for row in self._execute(sql, params).fetchall()]

    async def tail(self, count: int) -> list[Message]:
        """The ``count`` newest messages, oldest first."""
        return await self._call(self._tail, count)

    def _tail(self, count: int) -> list[Message]:
        sql = f"SELECT {_COLUMNS} FROM message ORDER BY seq DESC LIMIT {self._param}"
        rows = self._execute(sql, (count,)).fetchall()
        return [Message._make(row) for row in reversed(rows)]

    async def get(self, message_id: str) -> Message | None:
        """One message by id, or None."""
        return await self._call(self._get, message_id)

    def _get(self, message_id: str) -> Message | None:
        sql = f"SELECT {_COLUMNS} FROM message WHERE id = {self._param}"
        row = self._execute(sql, (message_id,)).fetchone()
        return Message._make(row) if row else None

    async def latest_seq(self) -> int:
        """The greatest stored ``seq`` (0 when nothing is stored)."""
        return await self._call(self._latest_seq)

    def _latest_seq(self) -> int:
        row = self._execute("SELECT MAX(seq) FROM message").fetchone()
        return int(row[0] or 0)

    async def count(self) -> int:
        """How many messages are stored."""
        return await self._call(self._count)

    def _count(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM message").fetchone()[0])

    async def close(self) -> None:
        """Close connections and stop this store's threads."""
        self._executor.shutdown(wait=True)
        if self._is_postgres:
            self._db.close_all()
        elif not self._db.is_closed():
            self._db.close()

    @property
    def _param(self) -> str:
        param: str = self._db.param
        return param

    def _execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self._db.execute_sql(sql, params)
