"""The worker process: the arq job that stores a message, and the worker that runs it.

One job is one message. Its row goes to the process's single :class:`Writer` (group commit,
publish after commit) and the job returns once the row is committed. Never imports Quart.

Timeouts are chosen so a killed worker's jobs come back quickly: a store gives up after
``STORE_TIMEOUT_S`` and asks for a retry; the job timeout is a little longer; and the
in-progress key that keeps other workers off a running job lives just past that (arq's default
is the job timeout plus ten seconds).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvloop
from arq import Retry
from arq.worker import func

from . import bus, contracts, metrics
from .config import Settings
from .messages import DEFAULT_CHANNEL, utc_timestamp
from .retention import Purger
from .runner import BatchingWorker
from .store import TRANSIENT_ERRORS, Store, prepare_database
from .writer import Writer

logger = logging.getLogger(__name__)

STORE_TIMEOUT_S = 4.0
JOB_TIMEOUT_S = 5.0
IN_PROGRESS_TTL_S = JOB_TIMEOUT_S + 1.0
FALLBACK_POLL_S = 0.5
HEALTH_CHECK_INTERVAL_S = 5

_RETRYABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, TimeoutError)


async def store_message(
    ctx: dict[str, Any], message_id: str, payload: str, received_at: str, channel: str = DEFAULT_CHANNEL
) -> int:
    """arq job: store one accepted message and announce it; returns its ``seq``.

    (``channel`` has a default so jobs queued by the version before channels still run.)
    """
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            writer: Writer = ctx["writer"]
            message = await writer.save((message_id, payload, received_at, channel))
    except _RETRYABLE as exc:
        _retry_while_tries_left(ctx, message_id, exc)
        await _give_up(ctx, message_id, payload, received_at, channel, exc)
        raise
    except Exception as exc:
        await _give_up(ctx, message_id, payload, received_at, channel, exc)
        raise
    return message.seq


async def store_batch(
    ctx: dict[str, Any],
    batch_id: str,
    message_ids: list[str],
    payloads: list[str],
    received_at: str,
    channel: str,
) -> int:
    """arq job: store a bulk write's documents, in line order, in one transaction, announce them
    in one notification, then mark its ids no longer queued; returns the last ``seq``."""
    rows = [
        (message_id, payload, received_at, channel)
        for message_id, payload in zip(message_ids, payloads, strict=True)
    ]
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            writer: Writer = ctx["writer"]
            stored = await writer.save_batch(rows)
    except _RETRYABLE as exc:
        _retry_while_tries_left(ctx, f"batch {batch_id}", exc)
        await _give_up_batch(ctx, batch_id, rows, exc)
        raise
    except Exception as exc:
        await _give_up_batch(ctx, batch_id, rows, exc)
        raise
    try:
        await bus.batch_done(ctx["redis"], message_ids)
    except bus.REDIS_ERRORS as exc:
        # Stored; run again (storing twice stores once) so its ids stop counting as queued.
        raise Retry(defer=1.0) from exc
    return stored[-1].seq


def _retry_while_tries_left(ctx: dict[str, Any], what: str, exc: BaseException) -> None:
    """Raise arq's Retry, backing off, while the job has tries left (then the caller gives up)."""
    settings: Settings = ctx["settings"]
    tries: int = ctx["job_try"]
    if tries < settings.store_max_tries:
        delay_s = min(settings.store_retry_base_s * 2 ** (tries - 1), 30.0)
        logger.warning("store of %s failed (try %d): %s; retrying in %.2fs", what, tries, exc, delay_s)
        raise Retry(defer=delay_s) from exc


async def _give_up_batch(
    ctx: dict[str, Any], batch_id: str, rows: list[tuple[str, str, str, str]], exc: BaseException
) -> None:
    logger.error("store of batch %s failed for good after %d tries: %r", batch_id, ctx["job_try"], exc)
    for _ in rows:
        metrics.failed()
    failed_at, error = utc_timestamp(), f"{type(exc).__name__}: {exc}"
    await bus.record_failures(
        ctx["redis"],
        {
            message_id: {
                "id": message_id,
                "payload": payload,
                "received_at": received_at,
                "channel": channel,
                "failed_at": failed_at,
                "tries": ctx["job_try"],
                "error": error,
            }
            for message_id, payload, received_at, channel in rows
        },
    )
    await bus.batch_done(ctx["redis"], [row[0] for row in rows])


async def _give_up(
    ctx: dict[str, Any], message_id: str, payload: str, received_at: str, channel: str, exc: BaseException
) -> None:
    logger.error("store of %s failed for good after %d tries: %r", message_id, ctx["job_try"], exc)
    metrics.failed()
    await bus.record_failure(
        ctx["redis"],
        message_id,
        {
            "id": message_id,
            "payload": payload,
            "received_at": received_at,
            "channel": channel,
            "failed_at": utc_timestamp(),
            "tries": ctx["job_try"],
            "error": f"{type(exc).__name__}: {exc}",
        },
    )


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    store = Store(settings.database_url, threads=1)
    await prepare_database(store)  # a worker may start first, on a database still to migrate
    writer = Writer(store, ctx["redis"])
    writer.start()
    ctx["store"], ctx["writer"] = store, writer
    ctx["purger"] = Purger(store, settings)
    ctx["purger"].start()
    ctx["metrics"] = metrics.start_reporter(ctx["redis"], "worker", settings.metrics_enabled)


async def _shutdown(ctx: dict[str, Any]) -> None:
    if "purger" in ctx:
        await ctx["purger"].stop()
    if "writer" in ctx:
        await ctx["writer"].stop()
        await ctx["store"].close()
    if "metrics" in ctx:
        await ctx["metrics"].stop()


def create_worker(settings: Settings, *, handle_signals: bool = True) -> BatchingWorker:
    """An arq worker for ``settings`` (Redis must be set in ``settings.redis_url``)."""
    assert settings.redis_url, "the worker needs a Redis URL"
    return BatchingWorker(
        functions=[
            func(store_message, name=bus.STORE_JOB, timeout=JOB_TIMEOUT_S),
            func(store_batch, name=bus.STORE_BATCH_JOB, timeout=JOB_TIMEOUT_S),
        ],
        queue_name=bus.QUEUE_NAME,
        redis_pool=bus.connect(settings.redis_url),
        on_startup=_startup,
        on_shutdown=_shutdown,
        ctx={"settings": settings},
        handle_signals=handle_signals,
        # Let running jobs finish on SIGTERM/SIGINT before cancelling (cancelled ones retry).
        job_completion_wait=2,
        max_jobs=settings.worker_max_jobs,
        in_progress_ttl_s=IN_PROGRESS_TTL_S,
        job_timeout=JOB_TIMEOUT_S,
        keep_result=0,
        poll_delay=FALLBACK_POLL_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        job_serializer=bus.dumps_job,
        job_deserializer=bus.loads_job,
        log_results=False,
    )


def run(settings: Settings) -> None:
    """Run a worker (on uvloop) until SIGINT/SIGTERM."""
    contracts.check()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    create_worker(settings).run()
