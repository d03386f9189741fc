"""The database schema and its migrations, with the version recorded in the database.

``pipeline_meta`` holds ``schema_version`` and the database's ``epoch`` (an id made once, when
the tables are first created or first migrated). Version 1 is the schema before channels: a
``message`` table without ``channel``, and no ``pipeline_meta``. Each later version is one step
in :data:`STEPS`; a database is brought up to date by running, in order, the steps above its
version, each in the same transaction as the new version number.

Every process runs :func:`prepare` at start (``release``, web, worker), so it must be safe when
several do it at once: the whole check-and-migrate holds the writers' lock (SQLite ``BEGIN
IMMEDIATE``; a Postgres advisory lock), and the version is read again under it, so the second
process finds the work done and does nothing.

Plain SQL rather than peewee's migrator: SQLite cannot add ``AUTOINCREMENT`` to an existing key
(``playhouse.migrate`` rebuilds tables without it), and ``AUTOINCREMENT`` is what keeps a
``seq`` from ever being handed out twice, even after the newest rows are deleted.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

LATEST_VERSION = 2
# Key of the Postgres advisory lock that orders writers (shared with store.py).
WRITE_LOCK_KEY = 0x5E9_10C4
# SQLite: how long a process starting beside a long migration waits for the write lock.
_MIGRATION_BUSY_TIMEOUT_MS = 120_000
_BUSY_TIMEOUT_MS = 3000


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer version of the pipeline than this one."""


def _message_table(postgres: bool, name: str = "message") -> str:
    key = "seq BIGSERIAL PRIMARY KEY" if postgres else "seq INTEGER PRIMARY KEY AUTOINCREMENT"
    return (
        f"CREATE TABLE {name} ({key}, id VARCHAR(36) NOT NULL, "
        "channel VARCHAR(64) NOT NULL DEFAULT 'default', payload TEXT NOT NULL, "
        "received_at VARCHAR(27) NOT NULL, persisted_at VARCHAR(27) NOT NULL)"
    )


_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS message_id ON message (id)",
    "CREATE INDEX IF NOT EXISTS message_channel_seq ON message (channel, seq)",
)
_SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS channel_stats (name VARCHAR(64) PRIMARY KEY, count BIGINT NOT NULL, "
    "latest_seq BIGINT NOT NULL, latest_at VARCHAR(27) NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pipeline_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)",
)
# One row per channel holding messages: its count and its newest message (latest_at is that
# message's received_at). Also how store.py keeps the figures after every insert.
FILL_CHANNEL_STATS = (
    "INSERT INTO channel_stats (name, count, latest_seq, latest_at) "
    "SELECT m.channel, c.count, c.latest_seq, m.received_at FROM message m JOIN "
    "(SELECT channel, COUNT(*) AS count, MAX(seq) AS latest_seq FROM message GROUP BY channel) c "
    "ON m.seq = c.latest_seq"
)


def _create(db: Any, postgres: bool) -> None:
    """Version 0 -> latest: a new, empty database."""
    db.execute_sql(_message_table(postgres))
    for sql in (*_INDEXES, *_SIDE_TABLES):
        db.execute_sql(sql)


def _add_channels(db: Any, postgres: bool) -> None:
    """Version 1 -> 2: every message gets a channel (old ones: ``default``), seq never reused."""
    if postgres:
        # bigserial already never reuses a number; a column with a constant default is added
        # without rewriting the table (Postgres 11+).
        db.execute_sql("ALTER TABLE message ADD COLUMN channel VARCHAR(64) NOT NULL DEFAULT 'default'")
        # Version 1's unique index on id had peewee's name for it.
        db.execute_sql("ALTER INDEX IF EXISTS storedmessage_id RENAME TO message_id")
    else:
        # SQLite only gets AUTOINCREMENT from CREATE TABLE: copy into a new table, seq as it was
        # (sqlite_sequence learns the highest), then swap the names.
        db.execute_sql(_message_table(False, "message_v2"))
        db.execute_sql(
            "INSERT INTO message_v2 (seq, id, channel, payload, received_at, persisted_at) "
            "SELECT seq, id, 'default', payload, received_at, persisted_at FROM message ORDER BY seq"
        )
        db.execute_sql("DROP TABLE message")
        db.execute_sql("ALTER TABLE message_v2 RENAME TO message")
    for sql in (*_INDEXES, *_SIDE_TABLES):
        db.execute_sql(sql)
    db.execute_sql(FILL_CHANNEL_STATS)


# (version it leads to, step): run in order, each once, for every version above the database's.
STEPS: list[tuple[int, Callable[[Any, bool], None]]] = [(2, _add_channels)]


def prepare(db: Any, postgres: bool) -> int:
    """Create or migrate the tables to :data:`LATEST_VERSION`; returns the version found."""
    if not postgres:
        db.execute_sql(f"PRAGMA busy_timeout = {_MIGRATION_BUSY_TIMEOUT_MS}")
    try:
        with db.atomic() if postgres else db.atomic("IMMEDIATE"):
            if postgres:
                db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            found = _version(db, postgres)
            if found > LATEST_VERSION:
                raise SchemaTooNew(
                    f"the database has schema version {found}; this code knows up to {LATEST_VERSION}"
                )
            if found == 0:
                _create(db, postgres)
            for version, step in STEPS:
                if found != 0 and found < version:
                    logger.info("migrating the database to schema version %d", version)
                    step(db, postgres)
            if found < LATEST_VERSION:
                _set_meta(db, postgres, "schema_version", str(LATEST_VERSION), replace=True)
                _set_meta(db, postgres, "epoch", uuid.uuid4().hex, replace=False)
    finally:
        if not postgres:
            db.execute_sql(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return found


def _tables(db: Any, postgres: bool) -> set[str]:
    if postgres:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {row[0] for row in db.execute_sql(sql).fetchall()}


def _version(db: Any, postgres: bool) -> int:
    tables = _tables(db, postgres)
    if "pipeline_meta" in tables:
        row = db.execute_sql("SELECT value FROM pipeline_meta WHERE key = 'schema_version'").fetchone()
        if row is not None:
            return int(row[0])
    return 1 if "message" in tables else 0


def _set_meta(db: Any, postgres: bool, key: str, value: str, *, replace: bool) -> None:
    p = "%s" if postgres else "?"
    action = "DO UPDATE SET value = excluded.value" if replace else "DO NOTHING"
    db.execute_sql(
        f"INSERT INTO pipeline_meta (key, value) VALUES ({p}, {p}) ON CONFLICT (key) {action}", (key, value)
    )
