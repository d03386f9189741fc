"""The arq worker: stores each queued message, then announces it. Never imports Quart.

One job is one message, but the jobs of a worker process hand their rows to a single
:class:`Writer`, which commits whatever has gathered in one transaction (group commit) and
publishes only after the commit. A job returns once its row is committed.

Timeouts are chosen so a killed worker's jobs come back quickly: a store gives up after
``STORE_TIMEOUT_S`` (and asks arq to retry), arq's own job timeout is a little longer, and the
in-progress key that blocks other workers from a running job lives just past that, not arq's
default job timeout plus ten seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Worker, func

from . import bus
from .config import Settings
from .messages import Message, pack, render, utc_timestamp
from .store import TRANSIENT_ERRORS, Store

logger = logging.getLogger(__name__)

STORE_TIMEOUT_S = 4.0
JOB_TIMEOUT_S = 5.0
IN_PROGRESS_TTL_S = JOB_TIMEOUT_S + 1.0
MAX_BATCH = 500
FALLBACK_POLL_S = 0.5
HEALTH_CHECK_INTERVAL_S = 5

Row = tuple[str, str, str]
_RETRYABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, TimeoutError)


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
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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


async def store_message(ctx: dict[str, Any], message_id: str, payload: str, received_at: str) -> int:
    """arq job: store one accepted message and announce it; returns its ``seq``."""
    settings: Settings = ctx["settings"]
    tries: int = ctx["job_try"]
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            writer: Writer = ctx["writer"]
            message = await writer.save((message_id, payload, received_at))
    except _RETRYABLE as exc:
        if tries < settings.store_max_tries:
            delay_s = min(settings.store_retry_base_s * 2 ** (tries - 1), 30.0)
            logger.warning(
                "store of %s failed (try %d): %s; retrying in %.2fs", message_id, tries, exc, delay_s
            )
            raise Retry(defer=delay_s) from exc
        await _give_up(ctx, message_id, payload, received_at, exc)
        raise
    except Exception as exc:
        await _give_up(ctx, message_id, payload, received_at, exc)
        raise
    return message.seq


async def _give_up(
    ctx: dict[str, Any], message_id: str, payload: str, received_at: str, exc: BaseException
) -> None:
    logger.error("store of %s failed for good after %d tries: %r", message_id, ctx["job_try"], exc)
    await bus.record_failure(
        ctx["redis"],
        message_id,
        {
            "id": message_id,
            "payload": payload,
            "received_at": received_at,
            "failed_at": utc_timestamp(),
            "tries": ctx["job_try"],
            "error": f"{type(exc).__name__}: {exc}",
        },
    )


class PipelineWorker(Worker):
    """arq's worker, woken by each enqueue instead of only polling on a timer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = IN_PROGRESS_TTL_S
        self._wake = asyncio.Event()

    async def main(self) -> None:
        """arq's main loop, but sleeping until woken and surviving Redis outages."""
        await self._wait_for_redis()
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        listener = asyncio.create_task(bus.listen(self.pool, bus.WAKE_CHANNEL, self._on_wake), name="wake")
        backoff_s = 0.1
        try:
            while True:
                self._wake.clear()
                try:
                    await self._poll_iteration()
                    backoff_s = 0.1
                except bus.REDIS_ERRORS as exc:
                    logger.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _wait_for_redis(self) -> None:
        backoff_s = 0.1
        while True:
            try:
                await self.pool.ping()
                return
            except bus.REDIS_ERRORS as exc:
                logger.warning("waiting for redis (%s)", exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _on_wake(self, _: bytes) -> None:
        self._wake.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start queued jobs, skipping this worker's own running ones without a round trip."""
        await super().start_jobs([job_id for job_id in job_ids if job_id.decode() not in self.tasks])

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        # A finished job frees a slot: look for more work now rather than at the next tick.
        self._wake.set()


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    store = Store(settings.database_url, threads=1)
    writer = Writer(store, ctx["redis"])
    writer.start()
    ctx["store"], ctx["writer"] = store, writer


async def _shutdown(ctx: dict[str, Any]) -> None:
    if "writer" in ctx:
        await ctx["writer"].stop()
        await ctx["store"].close()


def create_worker(settings: Settings, *, handle_signals: bool = True) -> PipelineWorker:
    """An arq worker for ``settings`` (Redis must be set in ``settings.redis_url``)."""
    assert settings.redis_url, "the worker needs a Redis URL"
    return PipelineWorker(
        functions=[func(store_message, name=bus.STORE_JOB, timeout=JOB_TIMEOUT_S)],
        queue_name=bus.QUEUE_NAME,
        redis_pool=bus.connect(settings.redis_url),
        on_startup=_startup,
        on_shutdown=_shutdown,
        ctx={"settings": settings},
        handle_signals=handle_signals,
        # Let running jobs finish on SIGTERM/SIGINT before cancelling (cancelled ones retry).
        job_completion_wait=2,
        max_jobs=settings.worker_max_jobs,
        job_timeout=JOB_TIMEOUT_S,
        keep_result=0,
        poll_delay=FALLBACK_POLL_S,
        # arq fails a job *without running it* past max_tries; our job counts its own tries
        # and records a failure, so arq's limit must never be the one that triggers.
        max_tries=1_000_000,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        job_serializer=bus.dumps_job,
        job_deserializer=bus.loads_job,
        log_results=False,
    )


def run(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    create_worker(settings).run()
