"""The worker process's single database writer: group commit, then publish.

Jobs hand it one row each and wait; it commits whatever rows have gathered in one transaction
(so a burst costs one commit, not one per message), then announces them on Redis, and only then
lets each job return. One writer per worker process keeps writes in one place and in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from arq.connections import ArqRedis

from . import bus
from .messages import Message, pack, render
from .store import Row, Store
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

MAX_BATCH = 500


class Writer:
    """The worker process's only database writer: one transaction for whatever has gathered."""

    def __init__(self, store: Store, redis: ArqRedis, *, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._redis = redis
        self._max_batch = max_batch
        self._pending: asyncio.Queue[tuple[Row, asyncio.Future[Message]]] = asyncio.Queue()
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
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((row, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < self._max_batch and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            # A job that already gave up (timed out, cancelled) will run again; skip its row.
            batch = [(row, future) for row, future in batch if not future.done()]
            if batch:
                await self._write(batch)

    async def _write(self, batch: Sequence[tuple[Row, asyncio.Future[Message]]]) -> None:
        try:
            stored = await self._store.save([row for row, _ in batch])
        except Exception as exc:  # noqa: BLE001 - each job decides what its failure means
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        try:
            await bus.publish(self._redis, pack([render(message) for message in stored]))
        except bus.REDIS_ERRORS as exc:
            # Stored is what counts; every web process catches up from the database.
            logger.warning("stored %d messages but could not announce them: %s", len(stored), exc)
        by_id = {message.id: message for message in stored}
        for row, future in batch:
            if not future.done():
                future.set_result(by_id[row[0]])
