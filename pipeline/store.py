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
- ``channel_stats`` (what ``GET /channels`` answers) is kept in the same transaction as every
  insert, so it is always exactly true and reading it never counts rows. The tables and their
  migrations are in ``schema.py``.
- Retention deletes, per channel, the oldest messages in ``seq`` order (a prefix, never a
  message with an older one still kept), in short transactions under the writers' lock, and
  records the highest ``seq`` it deleted (``channel_stats.purged_through``) in the same
  transaction as the count it takes off; a replay page reads it in the page's own snapshot, so
  a stream knows exactly whether something of its channels after its ``seq`` was purged.
- A read narrowed to several channels is one ordered query per channel (each walking the
  ``(channel, seq)`` index) merged by ``UNION ALL``: never a scan of the other channels' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import peewee
from playhouse.db_url import parse as parse_db_url
from playhouse.pool import PooledPostgresqlDatabase

from . import schema
from .files import sqlite_path
from .messages import Message, utc_timestamp

T = TypeVar("T")
logger = logging.getLogger(__name__)

# Errors worth retrying: a locked SQLite file, a lost or refused Postgres connection.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (peewee.OperationalError, peewee.InterfaceError)

# Key of the Postgres advisory lock that orders writers (any constant shared by all writers).
_SEQ_LOCK_KEY = schema.WRITE_LOCK_KEY
# In the order of Message's fields.
_COLUMNS = "id, seq, payload, received_at, persisted_at, channel"
# (id, payload, received_at, channel): a message to store.
Row = tuple[str, str, str, str]
# What one read of messages holds at most (beyond a single larger message): reads stream page
# by page, so this bounds a reader's memory whatever the messages' sizes (SPEC §3).
PAGE_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ChannelStats:
    """One channel's figures, as ``GET /channels`` shows them."""

    name: str
    count: int
    latest_seq: int
    latest_at: str


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
        """Create the tables or migrate them to the current schema (idempotent; ``release``)."""
        await self._call(schema.prepare, self._db, self._is_postgres)

    async def epoch(self) -> str:
        """The database's epoch: an id made once, when its tables were created or migrated."""
        return await self._call(self._epoch)

    def _epoch(self) -> str:
        row = self._execute("SELECT value FROM pipeline_meta WHERE key = 'epoch'").fetchone()
        return str(row[0])

    # Writes ---------------------------------------------------------------------------
    async def save(self, rows: Sequence[Row]) -> list[Message]:
        """Store ``(id, payload, received_at, channel)`` rows in one transaction; return them stored."""
        return await self._call(self._save, rows)

    def _save(self, rows: Sequence[Row]) -> list[Message]:
        persisted_at = utc_timestamp()
        ids = [row[0] for row in rows]
        atomic = self._db.atomic() if self._is_postgres else self._db.atomic("IMMEDIATE")
        with atomic:
            if self._is_postgres:
                self._execute("SELECT pg_advisory_xact_lock(%s)", (_SEQ_LOCK_KEY,))
            p = self._param
            values = ", ".join([f"({p}, {p}, {p}, {p}, {p})"] * len(rows))
            inserted = self._execute(
                "INSERT INTO message (id, payload, received_at, channel, persisted_at) "
                f"VALUES {values} ON CONFLICT (id) DO NOTHING RETURNING seq, channel, received_at",
                [value for row in rows for value in (*row, persisted_at)],
            ).fetchall()
            self._count_in_channels(inserted)
            placeholders = ", ".join([p] * len(ids))
            cursor = self._execute(
                f"SELECT {_COLUMNS} FROM message WHERE id IN ({placeholders}) ORDER BY seq", ids
            )
            return [Message._make(row) for row in cursor.fetchall()]

    def _count_in_channels(self, inserted: Sequence[tuple[int, str, str]]) -> None:
        # Inside the insert's transaction, under the writers' lock: these are the newest rows.
        newest: dict[str, tuple[int, int, str]] = {}
        for seq, channel, received_at in sorted(inserted):
            count = newest[channel][0] + 1 if channel in newest else 1
            newest[channel] = (count, seq, received_at)
        if not newest:
            return
        p = self._param
        values = ", ".join([f"({p}, {p}, {p}, {p})"] * len(newest))
        self._execute(
            f"INSERT INTO channel_stats (name, count, latest_seq, latest_at) VALUES {values} "
            "ON CONFLICT (name) DO UPDATE SET count = channel_stats.count + excluded.count, "
            "latest_seq = excluded.latest_seq, latest_at = excluded.latest_at",
            [value for name, figures in newest.items() for value in (name, *figures)],
        )

    # Reads ----------------------------------------------------------------------------
    # ``channels``: only messages of these channels (None: every channel).
    async def after(
        self,
        seq: int,
        limit: int,
        until: int | None = None,
        *,
        channels: Collection[str] | None = None,
        max_bytes: int = PAGE_MAX_BYTES,
    ) -> list[Message]:
        """Up to ``limit`` messages with ``seq`` greater than ``seq`` (and at most ``until``),
        cut short once their payloads pass ``max_bytes`` (always at least one message): a page
        of large messages holds a few of them, not ``limit``. An empty page means the end."""
        return await self._call(self._after, seq, limit, until, channels, max_bytes)

    def _after(
        self,
        seq: int,
        limit: int,
        until: int | None,
        channels: Collection[str] | None = None,
        max_bytes: int = PAGE_MAX_BYTES,
    ) -> list[Message]:
        limit = self._rows_within(seq, until, limit, channels, max_bytes)
        sql, params = self._select(_COLUMNS, seq, until, "ASC", limit, channels)
        return [Message._make(row) for row in self._execute(sql, params).fetchall()]

    def _rows_within(
        self, after: int, until: int | None, limit: int, channels: Collection[str] | None, max_bytes: int
    ) -> int:
        """How many of the next ``limit`` rows fit in ``max_bytes`` of payload (at least one),
        asking the database for sizes only, so no payload is loaded to find out."""
        # Postgres's octet_length reads a stored value's size without fetching it; SQLite's
        # length reads the text, so its rows are stepped one by one and the query stops as soon
        # as the page is full (a page of 1 MB messages must not read the next thousand).
        size_of = "octet_length" if self._is_postgres else "length"
        sql, params = self._select(f"seq, {size_of}(payload)", after, until, "ASC", limit, channels)
        cursor = self._execute(sql, params)
        try:
            total = 0
            for rows, (_, size) in enumerate(cursor):
                total += size
                if total > max_bytes:
                    return max(rows, 1)
            return limit
        finally:
            cursor.close()

    async def tail_after(
        self, count: int, *, after: int = 0, until: int | None = None, channels: Collection[str] | None = None
    ) -> int:
        """The ``seq`` after which lie the ``count`` newest messages with ``after < seq <= until``
        (a tail is then streamed page by page like any read, never loaded at once)."""
        return await self._call(self._tail_after, count, after, until, channels)

    def _tail_after(self, count: int, after: int, until: int | None, channels: Collection[str] | None) -> int:
        if count == 0:
            return until if until is not None else self._latest_seq()
        sql, params = self._select("seq", after, until, "DESC", count, channels)
        rows = self._execute(sql, params).fetchall()
        return int(rows[-1][0]) - 1 if len(rows) == count else after

    async def tail_page(
        self,
        count: int,
        limit: int,
        *,
        after: int = 0,
        below: int | None = None,
        channels: Collection[str] | None = None,
    ) -> tuple[int, int, list[Message]]:
        """The newest ``count`` messages after ``after`` (and at most ``below``) as ``(start,
        until, first page)``: :meth:`tail_after`, the newest ``seq`` and the first page after
        ``start`` (up to ``limit``), read in one snapshot, so a tail that fits in a page is
        exactly the newest ``count`` even while messages arrive and retention purges (the rest
        of a longer tail streams page by page up to ``until``, like any read)."""
        return await self._call(self._tail_page, count, limit, after, below, channels)

    def _tail_page(
        self, count: int, limit: int, after: int, below: int | None, channels: Collection[str] | None
    ) -> tuple[int, int, list[Message]]:
        with self._db.atomic():
            if self._is_postgres:
                # One snapshot for every read (the default, READ COMMITTED, takes one per statement).
                self._execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # (SQLite in WAL mode: a read transaction sees one snapshot from its first read.)
            # The newest seq belongs in the snapshot too: read before it, newer messages would
            # be cut off while the purges they caused showed, leaving fewer than are kept.
            until = self._latest_seq()
            until = until if below is None else min(until, below)
            start = self._tail_after(count, after, until, channels)
            return start, until, self._after(start, limit, until, channels)

    def _select(
        self,
        columns: str,
        after: int,
        until: int | None,
        order: str,
        limit: int,
        channels: Collection[str] | None,
    ) -> tuple[str, list[object]]:
        p = self._param
        where = f"seq > {p}" if until is None else f"seq > {p} AND seq <= {p}"
        bounds: tuple[int, ...] = (after,) if until is None else (after, until)
        if not channels or len(channels) == 1:
            narrow = f"channel = {p} AND " if channels else ""
            sql = f"SELECT {columns} FROM message WHERE {narrow}{where} ORDER BY seq {order} LIMIT {p}"
            return sql, [*(channels or ()), *bounds, limit]
        # One ordered walk of the (channel, seq) index per channel, merged.
        parts = [
            f"SELECT * FROM (SELECT {columns} FROM message WHERE channel = {p} AND {where} "
            f"ORDER BY seq {order} LIMIT {p}) AS c{number}"
            for number in range(len(channels))
        ]
        sql = " UNION ALL ".join(parts) + f" ORDER BY seq {order} LIMIT {p}"
        return sql, [value for name in sorted(channels) for value in (name, *bounds, limit)] + [limit]

    async def channels(self) -> list[ChannelStats]:
        """Every channel holding messages, by name, with its figures (kept, never counted)."""
        return await self._call(self._channels)

    def _channels(self) -> list[ChannelStats]:
        sql = "SELECT name, count, latest_seq, latest_at FROM channel_stats WHERE count > 0 ORDER BY name"
        return [ChannelStats(*row) for row in self._execute(sql).fetchall()]

    async def get(self, message_id: str) -> Message | None:
        """One message by id, or None."""
        return await self._call(self._get, message_id)

    def _get(self, message_id: str) -> Message | None:
        sql = f"SELECT {_COLUMNS} FROM message WHERE id = {self._param}"
        row = self._execute(sql, (message_id,)).fetchone()
        return Message._make(row) if row else None

    async def latest_seq(self) -> int:
        """The greatest ``seq`` ever stored, even if retention deleted it since (0: none yet)."""
        return await self._call(self._latest_seq)

    def _latest_seq(self) -> int:
        # channel_stats keeps a channel's latest_seq after retention deleted its messages, so
        # this stays the highest seq ever stored (a resume above it is a reset, SPEC §10).
        row = self._execute(
            "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM message "
            "UNION ALL SELECT MAX(latest_seq) AS s FROM channel_stats) AS highest"
        ).fetchone()
        return int(row[0] or 0)

    # Retention (SPEC §10) ---------------------------------------------------------------
    async def purge(self, channel: str, keep: int | None, received_before: str | None, batch: int) -> int:
        """Delete up to ``batch`` of ``channel``'s oldest messages beyond its newest ``keep`` or
        received before ``received_before``; returns how many went (0: nothing is due)."""
        return await self._call(self._purge, channel, keep, received_before, batch)

    def _purge(self, channel: str, keep: int | None, received_before: str | None, batch: int) -> int:
        p = self._param
        atomic = self._db.atomic() if self._is_postgres else self._db.atomic("IMMEDIATE")
        with atomic:
            if self._is_postgres:
                self._execute("SELECT pg_advisory_xact_lock(%s)", (_SEQ_LOCK_KEY,))
            # Under the writers' lock the count is exact, so several workers purging at once
            # each see what the others left and never take more than is due.
            row = self._execute(f"SELECT count FROM channel_stats WHERE name = {p}", (channel,)).fetchone()
            if row is None or row[0] == 0:
                return 0
            oldest = self._execute(
                f"SELECT seq, received_at FROM message WHERE channel = {p} ORDER BY seq LIMIT {p}",
                (channel, batch),
            ).fetchall()
            due = 0 if keep is None else min(len(oldest), max(0, int(row[0]) - keep))
            if received_before is not None:
                # A prefix: one received later but stored earlier keeps its successors a little
                # longer (by the queue's delay), so what is deleted is one range of seq.
                aged = 0
                for _, received_at in oldest:
                    if received_at >= received_before:
                        break
                    aged += 1
                due = max(due, aged)
            if due == 0:
                return 0
            through = int(oldest[due - 1][0])
            deleted = int(
                self._execute(
                    f"DELETE FROM message WHERE channel = {p} AND seq <= {p}", (channel, through)
                ).rowcount
            )
            self._execute(
                f"UPDATE channel_stats SET count = count - {p}, purged_through = {p} WHERE name = {p}",
                (deleted, through, channel),
            )
            return deleted

    async def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database now (Postgres: nothing to do)."""
        if not self._is_postgres:
            await self._call(lambda: self._execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    async def channel_names(self) -> list[str]:
        """Every channel that holds messages (retention's work list)."""
        sql = "SELECT name FROM channel_stats WHERE count > 0 ORDER BY name"
        return await self._call(lambda: [str(row[0]) for row in self._execute(sql).fetchall()])

    async def after_noting_purges(
        self, seq: int, limit: int, channels: Collection[str] | None = None
    ) -> tuple[list[Message], int]:
        """:meth:`after` with, read in the same snapshot, the highest ``seq`` retention deleted
        from ``channels`` (None: any channel; 0: none)."""
        return await self._call(self._after_noting_purges, seq, limit, channels)

    def _after_noting_purges(
        self, seq: int, limit: int, channels: Collection[str] | None
    ) -> tuple[list[Message], int]:
        with self._db.atomic():
            if self._is_postgres:
                # One snapshot for both reads (the default, READ COMMITTED, takes one per statement).
                self._execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # (SQLite in WAL mode: a read transaction sees one snapshot from its first read.)
            page = self._after(seq, limit, None, channels)
            p = self._param
            if channels:
                names = sorted(channels)
                placeholders = ", ".join([p] * len(names))
                sql = f"SELECT MAX(purged_through) FROM channel_stats WHERE name IN ({placeholders})"
                row = self._execute(sql, names).fetchone()
            else:
                row = self._execute("SELECT MAX(purged_through) FROM channel_stats").fetchone()
        return page, int(row[0] or 0)

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


async def prepare_database(store: Store, wait_s: float = 30.0) -> None:
    """Create or migrate the tables, waiting up to ``wait_s`` for a database that does not
    answer yet (a platform may start every process at once, the database among them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay_s = 0.2
    while True:
        try:
            await store.create_tables()
            return
        except TRANSIENT_ERRORS as exc:
            if loop.time() > deadline:
                raise
            logger.warning("waiting for the database: %s", exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
