"""Redis: the arq queue, the pub/sub channels and short-lived keys.

Enqueueing writes an ordinary arq job (``arq:job:<id>`` plus the ``arq:queue`` sorted set, JSON
instead of pickle) but through one Lua script, so a request costs one round trip and the
idempotency check, the job and the worker's wake-up happen atomically.

The script also carries a deadline. A Redis that stops answering (paused, swapping) still
runs the commands queued on its socket when it resumes; if the web process has answered 503
by then, the job must not appear. So the script refuses to write once the deadline (taken
shortly before the client's own timeout, on Redis's clock) has passed.

Order (SPEC §3): a job's score is its enqueue time on Redis's own clock, so every web process
agrees, in milliseconds with a microsecond fraction (arq compares scores with its millisecond
timestamps; a double holds today's microseconds exactly), and never equal to or below the
previous job's score (``pipeline:enqueued-us``), so jobs are claimed, and with one worker stored,
in the order they were accepted: equal scores would come out in the random order of their ids.
The score is one millisecond early: a worker asks for jobs due by the current *whole* millisecond,
and a job scored 0.4 ms past it would wait for the next poll instead of the wake-up it sent.

A bulk write (SPEC §12) is one job holding every document, queued by a script of its own with
the same deadline, order and idempotency (over the whole batch), which also records each id as
queued until the batch commits and refuses the batch while storage is behind.

It relies on redis-py's wording of a refused connection; ``contracts.py`` lists that and checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from arq.connections import ArqRedis
from arq.constants import default_queue_name, health_check_key_suffix, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .contracts import REDIS_REFUSED_WORDING
from .messages import DEFAULT_CHANNEL

# redis-py types its commands for both its sync and async clients (``Awaitable[T] | T``), hence
# the few "type: ignore[misc]" where we await one.

logger = logging.getLogger(__name__)

QUEUE_NAME = default_queue_name
STORE_JOB = "store_message"
STORE_BATCH_JOB = "store_batch"
MESSAGES_CHANNEL = "pipeline:messages"
WAKE_CHANNEL = "pipeline:wake"
FAILED_KEY = "pipeline:failed"
IDEMPOTENCY_PREFIX = "pipeline:idempotency:"
LAST_ENQUEUED_KEY = "pipeline:enqueued-us"
# Bulk writes (SPEC §12): one job per batch. Each id of a queued batch is a field of this hash
# (its value the batch's job id) until the batch commits, so GET /messages/<id> can say "queued"
# for every one; the counter holds the documents batches add beyond their one job each, so
# the queue's depth in documents is ZCARD + this.
BATCHED_KEY = "pipeline:batched"
BATCHED_EXTRA_KEY = "pipeline:batched-extra"
# A batch is refused (503) while the oldest queued job has waited longer than this: storage is
# behind, and accepting more would only grow the queue and every document's wait (SPEC §12).
MAX_QUEUE_AGE_MS = 100
IDEMPOTENCY_TTL_S = 24 * 3600
# arq expires a job that has not started within its TTL; an accepted message must wait for a
# worker however long it takes, so the TTL is a year rather than arq's default day.
JOB_TTL_MS = 365 * 24 * 3600 * 1000

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
REDIS_TIMEOUT_S = 2.0
# The script writes nothing once this much of the client's timeout has passed (see above).
_DEADLINE_S = REDIS_TIMEOUT_S - 0.5
_CLOCK_RESYNC_S = 60.0

_ENQUEUE_SCRIPT = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
if math.floor(now_us / 1000) > tonumber(ARGV[1]) then
  return {'late'}
end
if #KEYS == 4 then
  local previous = redis.call('GET', KEYS[4])
  if previous then
    return {'existing', previous}
  end
  redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6])
end
local last_us = tonumber(redis.call('GET', KEYS[3]) or '0')
if now_us <= last_us then
  now_us = last_us + 1
end
redis.call('SET', KEYS[3], now_us)
local due_us = now_us - 1000
local score = string.format('%d.%03d', math.floor(due_us / 1000), due_us % 1000)
redis.call('PSETEX', KEYS[1], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[2], score, ARGV[2])
redis.call('PUBLISH', ARGV[7], '')
return {'queued'}
"""

# The same for a batch (one job holding every document), spelt apart so each line of the script
# above stays unique. KEYS: job, queue, last enqueued, batched hash, batched counter, [idempotency].
# ARGV: deadline, job id, job, job TTL, idempotency record, its TTL, wake channel, the queue age
# past which it refuses (ms), ids...
_ENQUEUE_BATCH_SCRIPT = """
local clock = redis.call('TIME')
local at_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
if tonumber(ARGV[1]) < math.floor(at_us / 1000) then
  return {'late'}
end
if KEYS[6] then
  local first = redis.call('GET', KEYS[6])
  if first then return {'existing', first} end
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if oldest[2] and at_us / 1000 - tonumber(oldest[2]) > tonumber(ARGV[8]) then
  return {'busy'}
end
if KEYS[6] then redis.call('SET', KEYS[6], ARGV[5], 'EX', ARGV[6]) end
local previous_us = tonumber(redis.call('GET', KEYS[3]) or '0')
if at_us <= previous_us then at_us = previous_us + 1 end
redis.call('SET', KEYS[3], at_us)
local due = at_us - 1000
redis.call('PSETEX', KEYS[1], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[2], string.format('%d.%03d', math.floor(due / 1000), due % 1000), ARGV[2])
local fields = {}
for i = 9, #ARGV do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[2]
  if #fields >= 1000 then
    redis.call('HSET', KEYS[4], unpack(fields))
    fields = {}
  end
end
if #fields > 0 then redis.call('HSET', KEYS[4], unpack(fields)) end
redis.call('INCRBY', KEYS[5], #ARGV - 9)
redis.call('PUBLISH', ARGV[7], '')
return {'queued'}
"""

# A batch is committed (or recorded as failed): its ids are no longer queued. Idempotent: a
# batch run twice finds its fields gone the second time and counts nothing twice.
# KEYS: batched hash, batched counter. ARGV: ids.
_BATCH_DONE_SCRIPT = """
local removed = 0
for i = 1, #ARGV, 500 do
  removed = removed + redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
if removed > 1 then redis.call('DECRBY', KEYS[2], removed - 1) end
return removed
"""


def dumps_job(data: dict[str, Any]) -> bytes:
    """arq job serializer: JSON, never pickle (exceptions in results become their text)."""
    return orjson.dumps(data, default=str)


def loads_job(raw: bytes) -> dict[str, Any]:
    """arq job deserializer."""
    result: dict[str, Any] = orjson.loads(raw)
    return result


def connect(url: str, *, timeout_s: float = REDIS_TIMEOUT_S, retry_dropped: bool = True) -> ArqRedis:
    """A Redis client (an arq pool) for ``redis://``, ``rediss://`` or ``unix://`` URLs.

    With ``retry_dropped``, a command whose connection turns out dead (as every pooled one is
    after a Redis restart) is retried once on a fresh connection; timeouts are never retried.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "health_check_interval": 30,
    }
    if retry_dropped:
        options["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    scheme = urlsplit(url).scheme
    if scheme != "unix":
        options["socket_keepalive"] = True
    if scheme == "rediss":
        # Heroku Redis serves TLS with a self-signed certificate.
        options["ssl_cert_reqs"] = "none"
    pool = ConnectionPool.from_url(url, **options)
    return ArqRedis(
        pool,
        job_serializer=dumps_job,
        job_deserializer=loads_job,
        default_queue_name=QUEUE_NAME,
    )


class Unavailable(Exception):
    """Redis could not take the job (down, refusing, or too slow to answer).

    ``outcome_known`` is False when the script may have run although no answer came (the
    connection dropped after sending, or the answer was late): the caller must look whether the
    job exists. Past the deadline, a script that has not run yet never writes anything.
    """

    def __init__(self, reason: str, *, outcome_known: bool = True) -> None:
        super().__init__(reason)
        self.outcome_known = outcome_known


class QueueBehind(Exception):
    """The queue's oldest job has waited longer than :data:`MAX_QUEUE_AGE_MS`: storage is not
    keeping up, and a batch accepted now would wait too (nothing was queued)."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body."""


@dataclass(frozen=True)
class Accepted:
    """What ingest answers: the message id and when it was received."""

    id: str
    received_at: str


@dataclass(frozen=True)
class AcceptedBatch:
    """What a bulk write answers: the documents' ids, in line order, and when they were received."""

    ids: list[str]
    received_at: str


class Enqueuer:
    """Puts store jobs on the arq queue, one round trip each.

    It has a connection pool of its own, without redis-py's silent retry, because whether a
    failed attempt may have reached Redis decides what a failure means. A connection refused
    means nothing was sent: 503 at once. A connection that dropped with the script possibly on
    its way is retried with the same message id until the deadline: running the script twice
    is harmless (the same job id is queued again, and storing is idempotent), so a retry that
    gets through settles the outcome either way.
    """

    def __init__(self, url: str) -> None:
        self._redis = connect(url, retry_dropped=False)
        self._script = self._redis.register_script(_ENQUEUE_SCRIPT)
        self._batch_script = self._redis.register_script(_ENQUEUE_BATCH_SCRIPT)
        self._offset_ms = 0.0
        self._synced_at = float("-inf")

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose(close_connection_pool=True)

    async def enqueue(
        self,
        message_id: str,
        payload: str,
        received_at: str,
        *,
        channel: str = DEFAULT_CHANNEL,
        idempotency_key: str | None = None,
        body: bytes = b"",
    ) -> Accepted:
        """Queue a store job for one message, or raise Unavailable / IdempotencyConflict."""
        digest = ""
        if idempotency_key is not None:
            # The same key and body sent to another channel is another request (422).
            digest = _sha256(body if channel == DEFAULT_CHANNEL else channel.encode() + b"\n" + body)
        reply, maybe_sent = await self._until_settled(
            lambda: self._run_script(message_id, payload, received_at, channel, idempotency_key, digest)
        )
        status = reply[0].decode()
        if status == "late":
            raise Unavailable(
                "Redis answered after the deadline; nothing was queued", outcome_known=not maybe_sent
            )
        if status == "existing":
            previous_id, previous_received_at, previous_digest = reply[1].decode().split(" ")[:3]
            if previous_id == message_id:  # our own earlier attempt got through
                return Accepted(message_id, received_at)
            if previous_digest != digest:
                raise IdempotencyConflict(previous_id)
            return Accepted(previous_id, previous_received_at)
        return Accepted(message_id, received_at)

    async def enqueue_batch(
        self,
        batch_id: str,
        message_ids: list[str],
        payloads: list[str],
        received_at: str,
        *,
        channel: str = DEFAULT_CHANNEL,
        idempotency_key: str | None = None,
        body: bytes = b"",
    ) -> AcceptedBatch:
        """Queue one store job for a whole batch (one round trip), or raise Unavailable,
        QueueBehind or IdempotencyConflict. A replay of the key answers the first batch's ids."""
        digest = ""
        if idempotency_key is not None:
            # A batch is another request than the same bytes sent as one document (422).
            digest = _sha256(b"x-ndjson\n" + channel.encode() + b"\n" + body)
        reply, maybe_sent = await self._until_settled(
            lambda: self._run_batch_script(
                batch_id, message_ids, payloads, received_at, channel, idempotency_key, digest
            )
        )
        status = reply[0].decode()
        if status == "late":
            raise Unavailable(
                "Redis answered after the deadline; nothing was queued", outcome_known=not maybe_sent
            )
        if status == "busy":
            raise QueueBehind()
        if status == "existing":
            previous = reply[1].decode().split(" ")
            if previous[0] == batch_id:  # our own earlier attempt got through
                return AcceptedBatch(message_ids, received_at)
            if previous[2] != digest or len(previous) < 4:
                raise IdempotencyConflict(previous[0])
            return AcceptedBatch(previous[3].split(","), previous[1])
        return AcceptedBatch(message_ids, received_at)

    async def _until_settled(self, attempt: Callable[[], Awaitable[list[bytes]]]) -> tuple[list[bytes], bool]:
        """Run an enqueue script until it answers; returns its reply and whether an earlier
        attempt may have reached Redis."""
        give_up_at = time.monotonic() + _DEADLINE_S
        maybe_sent = False
        delay_s = 0.0
        while True:
            try:
                await self._sync_clock()
                return await attempt(), maybe_sent
            except RedisConnectionError as exc:
                # redis-py words every failure to connect "Error ... connecting to ..."; any other
                # connection error happened with the command possibly on its way (contracts.py).
                maybe_sent = maybe_sent or REDIS_REFUSED_WORDING not in str(exc)
                if not maybe_sent or time.monotonic() + delay_s >= give_up_at:
                    # A refused connection settles it at once: nothing was sent, answer 503.
                    raise Unavailable(str(exc), outcome_known=not maybe_sent) from exc
                await asyncio.sleep(delay_s)
                delay_s = min(max(delay_s * 2, 0.05), 0.4)
            except REDIS_ERRORS as exc:
                # A timeout does not say whether the script ran in time and only its answer was
                # late (a busy event loop reads late too): the caller has to ask.
                timed_out = isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError))
                raise Unavailable(
                    f"{type(exc).__name__}: {exc}", outcome_known=not (maybe_sent or timed_out)
                ) from exc

    async def _run_script(
        self,
        message_id: str,
        payload: str,
        received_at: str,
        channel: str,
        idempotency_key: str | None,
        digest: str,
    ) -> list[bytes]:
        job_args = (message_id, payload, received_at, channel)
        keys, args = self._job_call(
            message_id, STORE_JOB, job_args, idempotency_key, f"{message_id} {received_at} {digest}"
        )
        reply: list[bytes] = await self._script(keys=keys, args=args)
        return reply

    async def _run_batch_script(
        self,
        batch_id: str,
        message_ids: list[str],
        payloads: list[str],
        received_at: str,
        channel: str,
        idempotency_key: str | None,
        digest: str,
    ) -> list[bytes]:
        job_args = (batch_id, message_ids, payloads, received_at, channel)
        keys, args = self._job_call(
            batch_id,
            STORE_BATCH_JOB,
            job_args,
            idempotency_key,
            f"{batch_id} {received_at} {digest} {','.join(message_ids)}",
            more_keys=(BATCHED_KEY, BATCHED_EXTRA_KEY),
            more_args=(MAX_QUEUE_AGE_MS, *message_ids),
        )
        reply: list[bytes] = await self._batch_script(keys=keys, args=args)
        return reply

    def _job_call(
        self,
        job_id: str,
        function: str,
        job_args: tuple[Any, ...],
        idempotency_key: str | None,
        record: str,
        *,
        more_keys: tuple[str, ...] = (),
        more_args: tuple[Any, ...] = (),
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments the enqueue scripts share: the job, its deadline on Redis's
        clock, and what an ``Idempotency-Key`` records (``record``)."""
        now_ms = time.time() * 1000
        job = serialize_job(function, job_args, {}, None, int(now_ms), serializer=dumps_job)
        keys = [job_key_prefix + job_id, QUEUE_NAME, LAST_ENQUEUED_KEY, *more_keys]
        if idempotency_key is not None:
            keys.append(IDEMPOTENCY_PREFIX + _sha256(idempotency_key.encode()))
        deadline_ms = int(now_ms + self._offset_ms + _DEADLINE_S * 1000)
        args = [deadline_ms, job_id, job, JOB_TTL_MS, record, IDEMPOTENCY_TTL_S, WAKE_CHANNEL, *more_args]
        return keys, args

    async def _sync_clock(self) -> None:
        # The deadline is on Redis's clock; learn its offset from ours (error <= RTT/2).
        if time.monotonic() - self._synced_at < _CLOCK_RESYNC_S:
            return
        before = time.time()
        seconds, micros = await self._redis.time()
        after = time.time()
        self._offset_ms = (seconds + micros / 1e6 - (before + after) / 2) * 1000
        self._synced_at = time.monotonic()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def job_exists(redis: ArqRedis, message_id: str) -> bool:
    """True while the store job for ``message_id`` (its own, or its batch's) is queued or running."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(job_key_prefix + message_id)
        pipe.hget(BATCHED_KEY, message_id)
        own, batch_id = await pipe.execute()
    if own:
        return True
    return bool(batch_id) and bool(await redis.exists(job_key_prefix + batch_id.decode()))


async def batch_done(redis: ArqRedis, message_ids: list[str]) -> None:
    """A batch is committed (or recorded as failed): its ids are no longer queued."""
    await redis.eval(_BATCH_DONE_SCRIPT, 2, BATCHED_KEY, BATCHED_EXTRA_KEY, *message_ids)  # type: ignore[misc]


async def queued_documents(redis: ArqRedis) -> int:
    """Documents queued or in progress: one per single-document job, every one of a batch's."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(QUEUE_NAME)
        pipe.get(BATCHED_EXTRA_KEY)
        jobs, extra = await pipe.execute()
    return int(jobs) + int(extra or 0)


async def worker_alive(redis: ArqRedis) -> bool:
    """True if some worker recorded its health check recently."""
    return bool(await redis.exists(QUEUE_NAME + health_check_key_suffix))


async def publish(redis: ArqRedis, packed: str) -> None:
    """Announce stored messages (an RFC 7464 sequence of rendered messages)."""
    await redis.publish(MESSAGES_CHANNEL, packed)


async def record_failure(redis: ArqRedis, message_id: str, details: dict[str, Any]) -> None:
    """Keep a message whose store gave up where an operator can see it."""
    await redis.hset(FAILED_KEY, message_id, orjson.dumps(details))  # type: ignore[misc,arg-type]


async def record_failures(redis: ArqRedis, records: dict[str, dict[str, Any]]) -> None:
    """Keep a batch's messages whose store gave up where an operator can see them."""
    mapping = {message_id: orjson.dumps(details) for message_id, details in records.items()}
    await redis.hset(FAILED_KEY, mapping=mapping)  # type: ignore[misc]


async def failure(redis: ArqRedis, message_id: str) -> dict[str, Any] | None:
    """The failure record of one message, if its store gave up."""
    raw = await redis.hget(FAILED_KEY, message_id)  # type: ignore[misc]
    return loads_job(raw) if raw else None


async def retry_failed(url: str) -> int:
    """Queue every message recorded as failed once more (an operator's command); returns how many."""
    enqueuer = Enqueuer(url)
    redis = connect(url)
    count = 0
    try:
        for message_id, raw in (await redis.hgetall(FAILED_KEY)).items():  # type: ignore[misc]
            record = loads_job(raw)
            await enqueuer.enqueue(
                record["id"],
                record["payload"],
                record["received_at"],
                channel=record.get("channel", DEFAULT_CHANNEL),
            )
            await redis.hdel(FAILED_KEY, message_id)  # type: ignore[misc]
            count += 1
    finally:
        await enqueuer.close()
        await redis.aclose(close_connection_pool=True)
    return count


async def failure_count(redis: ArqRedis) -> int:
    """How many messages are recorded as failed."""
    return int(await redis.hlen(FAILED_KEY))  # type: ignore[misc]


async def listen(
    redis: ArqRedis,
    channel: str,
    on_message: Callable[[bytes], Awaitable[None]],
    *,
    on_connect: Callable[[], Awaitable[None]] | None = None,
    idle_ping_s: float = 5.0,
) -> None:
    """Relay a channel's messages to ``on_message`` for ever, reconnecting with back-off.

    ``on_connect`` runs after every (re)subscription, so a caller can catch up on what was
    published while it was away. Cancel the task to stop.
    """
    backoff_s = 0.1
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            if on_connect is not None:
                await on_connect()
            backoff_s = 0.1
            await _relay(pubsub, on_message, idle_ping_s)
        except REDIS_ERRORS as exc:
            logger.warning("subscription to %s lost (%s); retrying in %.1fs", channel, exc, backoff_s)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)
        finally:
            # aclose() must not hide a CancelledError, nor raise over the original error.
            with contextlib.suppress(*REDIS_ERRORS):
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]


async def _relay(pubsub: Any, on_message: Callable[[bytes], Awaitable[None]], idle_ping_s: float) -> None:
    # A Redis that vanished without closing the socket would leave us waiting for ever, so an
    # idle subscription pings, and two silent intervals count as a lost connection.
    last_heard = time.monotonic()
    while True:
        message = await pubsub.get_message(timeout=idle_ping_s)
        now = time.monotonic()
        if message is None:
            if now - last_heard > 2 * idle_ping_s:
                raise TimeoutError("no answer to pings")
            await pubsub.ping()
            continue
        last_heard = now
        if message["type"] == "message":
            await on_message(message["data"])
