"""Retention (SPEC §10): the worker deletes what ``RETENTION_MAX_MESSAGES`` (newest N kept per
channel) and ``RETENTION_MAX_AGE`` (from ``received_at``) say must go.

Every ``RETENTION_INTERVAL_S`` a worker walks the channels and deletes each one's due messages,
oldest first, :data:`BATCH` at a time. Each batch is its own short transaction under the
writers' lock (``Store.purge``), and it runs on the same store thread as the worker's writer, so
a commit waiting to be written waits for one batch at most, never for the whole purge; after
each batch the purger rests as long as the batch took, so it never has more than half the thread. Several
workers may purge at once: each batch reads the channel's count again under the lock, so they
share the work and none deletes more than is due (a delete of rows already gone deletes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from . import metrics
from .config import Settings
from .store import TRANSIENT_ERRORS, Store
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# Rows per transaction: a few milliseconds of deleting, so no commit waits long behind one.
BATCH = 50
# SQLite: the purger checkpoints the log itself every so many batches. Otherwise the log its
# deletes grow is copied back by whichever commit passes SQLite's threshold (1,000 pages), and
# about half the time that is one of the writer's commits, which then waits tens of ms.
CHECKPOINT_EVERY = 10


def _timestamp(seconds: float) -> str:
    # The same fixed-width text as received_at, so the two compare as strings.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Purger:
    """The worker's retention task: a pass over every channel each interval."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._keep = settings.retention_max_messages
        self._max_age_s = settings.retention_max_age_s
        self._interval_s = settings.retention_interval_s
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether any bound is set (unset: keep everything)."""
        return self._keep is not None or self._max_age_s is not None

    def start(self) -> None:
        """Start purging every interval (nothing to do when no bound is set)."""
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Stop purging (a batch in progress commits or rolls back whole)."""
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _run(self) -> None:
        while True:
            try:
                await self.purge_due()
            except TRANSIENT_ERRORS as exc:
                logger.warning("retention pass stopped by the database: %s; trying again next pass", exc)
            await asyncio.sleep(self._interval_s)

    async def purge_due(self) -> int:
        """Delete every message due now, batch by batch; returns how many went."""
        received_before = None if self._max_age_s is None else _timestamp(time.time() - self._max_age_s)
        total = batches = 0
        for channel in await self._store.channel_names():
            while True:
                started = time.monotonic()
                deleted = await self._store.purge(channel, self._keep, received_before, BATCH)
                batches += 1
                if deleted and batches % CHECKPOINT_EVERY == 0:
                    await self._store.checkpoint()
                metrics.purged(deleted)
                total += deleted
                if deleted < BATCH:
                    break
                # Rest as long as the batch took: the purge has at most half of the store
                # thread, and a commit arriving meanwhile goes straight in.
                await asyncio.sleep(time.monotonic() - started)
        if total:
            logger.info("retention deleted %d messages", total)
        return total
