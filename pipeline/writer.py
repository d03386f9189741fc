"""The worker process's single database writer: group commit, then publish.

Jobs hand it one row each (a bulk write's job: its whole batch, never split) and wait; it
commits whatever rows have gathered in one transaction (so a burst costs one commit, not one
per message), then announces them on Redis in one notification, and only then lets each job
return. One writer per worker process keeps writes in one place and in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from arq.connections import ArqRedis

from . import bus, metrics
from .messages import Message, pack, render, utc_timestamp
from .store import Row, Store
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# Rows per transaction: a bulk write's batch (up to 1,000) always goes whole; whatever else has
# gathered joins it up to this bound (5 parameters a row stays far below SQLite's 32,766).
MAX_ROWS = 2000

# The rows a job hands over (one message, or a batch in line order) and what it waits on.
_Item = tuple[list[Row], "asyncio.Future[list[Message]]"]


class Writer:
    """The worker process's only database writer: one transaction for whatever has gathered."""

    def __init__(self, store: Store, redis: ArqRedis, *, max_rows: int = MAX_ROWS) -> None:
        self._store = store
        self._redis = redis
        self._max_rows = max_rows
        self._pending: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start writing."""
        self._task = asyncio.create_task(self._run(), name="writer")

    async def stop(self) -> None:
        """Stop writing (pending saves fail with CancelledError, and their jobs retry)."""
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def save(self, row: Row) -> Message:
        """Store one row and return it as stored (once committed and announced)."""
        (message,) = await self.save_batch([row])
        return message

    async def save_batch(self, rows: list[Row]) -> list[Message]:
        """Store rows in one transaction, in this order, and return them as stored (once
        committed and announced, in one notification)."""
        future: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = [self._pending.popleft()]
            size = len(batch[0][0])
            while self._pending and size + len(self._pending[0][0]) <= self._max_rows:
                size += len(self._pending[0][0])
                batch.append(self._pending.popleft())
            # A job that already gave up (timed out, cancelled) will run again; skip its rows.
            batch = [(rows, future) for rows, future in batch if not future.done()]
            if batch:
                await self._write(batch)

    async def _write(self, batch: Sequence[_Item]) -> None:
        started_at = utc_timestamp()
        try:
            stored = await self._store.save([row for rows, _ in batch for row in rows])
        except Exception as exc:  # noqa: BLE001 - each job decides what its failure means
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        metrics.stored(stored, since=started_at)
        try:
            await bus.publish(self._redis, pack([render(message) for message in stored]))
        except bus.REDIS_ERRORS as exc:
            # Stored is what counts; every web process catches up from the database.
            logger.warning("stored %d messages but could not announce them: %s", len(stored), exc)
        by_id = {message.id: message for message in stored}
        for rows, future in batch:
            if not future.done():
                future.set_result([by_id[row[0]] for row in rows])
