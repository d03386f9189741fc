"""Metrics (SPEC §11): counted in each process, summed in Redis, exposed by ``GET /metrics``.

Every process (web or worker) counts in plain Python (an integer or a histogram bucket per
event: well under a microsecond) and once a second adds what it counted to one Redis hash
(``HINCRBY``; one pipeline per process per second). Processes also report their gauges (open
streams) in a hash of their own that expires when they stop reporting. ``/metrics`` on any web
process reads those, the queue's depth and the age of its oldest job from Redis, and renders it
all with prometheus_client's text format. So a scrape shows the whole pipeline — every web
process and every worker, on one machine (``run.py``, ``WEB_CONCURRENCY``) or on many
(Procfile processes on separate dynos) — whichever web process answers it; and counters keep
counting across process restarts. prometheus_client's multiprocess mode would cover only
processes sharing one folder, i.e. one machine, and not a worker on another dyno.

Costs and limits: a process killed outright loses what it counted in its last second; a flush
whose answer is lost (Redis dropped mid-reply) is retried and may count twice. Counters start
again from zero when Redis loses its data, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from arq.connections import ArqRedis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import bus
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TOTALS_KEY = "pipeline:metrics"
PROCESSES_KEY = "pipeline:metrics:processes"
PROCESS_KEY_PREFIX = "pipeline:metrics:process:"
QUEUE_KEY = bus.QUEUE_NAME  # arq's queue: jobs stay in it until they are finished
FLUSH_INTERVAL_S = 1.0
# A process that has not reported for this long is gone; its gauges no longer count.
PROCESS_TTL_S = 10
_REDIS_TIMEOUT_S = 2.0

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BODY_BUCKETS_BYTES = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class _Counter:
    """A counter with labels, counted locally until the next flush."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.pending: dict[tuple[str, ...], int] = {}

    def inc(self, values: tuple[str, ...] = (), amount: int = 1) -> None:
        pending = self.pending
        pending[values] = pending.get(values, 0) + amount

    def drain(self) -> Iterator[tuple[str, int | float]]:
        pending, self.pending = self.pending, {}
        for values, amount in pending.items():
            yield _field(self.name, values, "n"), amount


class _Histogram:
    """A histogram with labels: bucket counts (not cumulative) and a sum, counted locally."""

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.bounds = tuple(buckets)
        self.pending: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, values: tuple[str, ...] = ()) -> None:
        counts = self.pending.get(values)
        if counts is None:
            counts = self.pending[values] = [0] * (len(self.bounds) + 2)
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def drain(self) -> Iterator[tuple[str, int | float]]:
        pending, self.pending = self.pending, {}
        for values, counts in pending.items():
            for index, count in enumerate(counts[:-1]):
                if count:
                    yield _field(self.name, values, f"b{index}"), int(count)
            yield _field(self.name, values, "sum"), float(counts[-1])


class _Gauge:
    """A gauge with labels whose value is this process's own (summed over live processes)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, values: tuple[str, ...], amount: float) -> None:
        self.values[values] = self.values.get(values, 0) + amount

    def snapshot(self) -> Iterator[tuple[str, float]]:
        for values, value in self.values.items():
            yield _field(self.name, values, "v"), value


def _field(name: str, values: tuple[str, ...], part: str) -> str:
    # Label values here come from small fixed sets (status codes, transports): no separators.
    return f"{name}|{','.join(values)}|{part}"


INGEST_REQUESTS = _Counter(
    "pipeline_ingest_requests", "Ingest requests (POST/PUT of messages) by answer status.", ["status"]
)
INGEST_BODY_BYTES = _Histogram(
    "pipeline_ingest_request_body_bytes", "Size of ingest request bodies that were read.", BODY_BUCKETS_BYTES
)
INGEST_DURATION = _Histogram(
    "pipeline_ingest_duration_seconds",
    "Time from an ingest request's arrival to its answer (body read, validated, queued).",
    LATENCY_BUCKETS_S,
)
MESSAGES_STORED = _Counter("pipeline_messages_stored", "Messages committed to the database by workers.")
MESSAGES_FAILED = _Counter(
    "pipeline_messages_failed", "Messages whose store gave up after its last try (recorded as failed)."
)
MESSAGES_PURGED = _Counter("pipeline_messages_purged", "Messages deleted by retention (SPEC §10).")
STORE_LATENCY = _Histogram(
    "pipeline_store_latency_seconds",
    "Receipt to stored: a message's received_at to its persisted_at (committed).",
    LATENCY_BUCKETS_S,
)
DELIVERY_LATENCY = _Histogram(
    "pipeline_delivery_latency_seconds",
    "Receipt to written to a live stream: received_at to the write of the message on a connection.",
    LATENCY_BUCKETS_S,
    ["transport"],
)
DELIVERIES = _Counter(
    "pipeline_deliveries", "Messages written to live streams (one per message per stream).", ["transport"]
)
STREAM_WRITES = _Counter(
    "pipeline_stream_writes",
    "Writes of messages to live streams' connections: what arrives together (a batch) is one "
    "write per stream.",
    ["transport"],
)
STREAMS_CLOSED_SLOW = _Counter(
    "pipeline_streams_closed_slow",
    "Live streams closed because their client fell too far behind (WebSocket 1013, SSE end).",
    ["transport"],
)
OPEN_STREAMS = _Gauge("pipeline_open_streams", "Live streams open now, by transport.", ["transport"])

_COUNTERS = (
    INGEST_REQUESTS,
    MESSAGES_STORED,
    MESSAGES_FAILED,
    MESSAGES_PURGED,
    DELIVERIES,
    STREAM_WRITES,
    STREAMS_CLOSED_SLOW,
)
_HISTOGRAMS = (INGEST_BODY_BYTES, INGEST_DURATION, STORE_LATENCY, DELIVERY_LATENCY)
_GAUGES = (OPEN_STREAMS,)

_enabled = True
_status_labels: dict[int, tuple[str]] = {}
_received_s: dict[int, float] = {}
_RECEIVED_CACHE_SIZE = 4096


def configure(enabled: bool) -> None:
    """Count or not (``METRICS=0`` turns counting off, for measuring what it costs)."""
    global _enabled
    _enabled = enabled


def start_reporter(redis: ArqRedis, role: str, enabled: bool) -> Reporter:
    """Count (or not) in this process and report to Redis every second until ``stop()``."""
    configure(enabled)
    reporter = Reporter(redis, role)
    reporter.start()
    return reporter


# --- what the hot paths call: each one a few dictionary updates ------------------------------


def ingested(status: int, body_bytes: int | None, started_s: float) -> None:
    """One ingest request answered (``started_s`` from ``time.perf_counter()``)."""
    if not _enabled:
        return
    INGEST_DURATION.observe(time.perf_counter() - started_s)
    labels = _status_labels.get(status)
    if labels is None:
        labels = _status_labels[status] = (str(status),)
    INGEST_REQUESTS.inc(labels)
    if body_bytes is not None:
        INGEST_BODY_BYTES.observe(body_bytes)


def stored(messages: Iterable[Any], *, since: str) -> None:
    """Messages committed (each with ``received_at`` and ``persisted_at`` texts) by a save that
    began at ``since``; rows that were already stored before (a job run twice) do not count."""
    if not _enabled:
        return
    count = 0
    for message in messages:
        if message.persisted_at < since:
            continue
        STORE_LATENCY.observe(max(0.0, _seconds_between(message.received_at, message.persisted_at)))
        count += 1
    MESSAGES_STORED.inc((), count)


def failed() -> None:
    """A message's store gave up for good."""
    if _enabled:
        MESSAGES_FAILED.inc()


def purged(count: int) -> None:
    """Retention deleted ``count`` messages."""
    if _enabled and count:
        MESSAGES_PURGED.inc((), count)


def delivered(transport: str, items: Sequence[Any]) -> None:
    """Stored messages (hub deliveries: ``seq`` and rendered ``text``) written to one stream,
    in one write."""
    if not _enabled or not items:
        return
    now = time.time()
    labels = (transport,)
    cache = _received_s
    for item in items:
        received = cache.get(item.seq)
        if received is None:
            if len(cache) >= _RECEIVED_CACHE_SIZE:
                cache.clear()
            received = cache[item.seq] = received_at_s(item.text)
        if received == received:  # not NaN
            DELIVERY_LATENCY.observe(max(0.0, now - received), labels)
    DELIVERIES.inc(labels, len(items))
    STREAM_WRITES.inc(labels, 1)


def stream_opened(transport: str) -> None:
    """A live stream opened (pair with :func:`stream_closed`)."""
    OPEN_STREAMS.add((transport,), 1)


def stream_closed(transport: str) -> None:
    """A live stream ended."""
    OPEN_STREAMS.add((transport,), -1)


def closed_slow(transport: str) -> None:
    """A live stream is being closed because its client fell too far behind."""
    if _enabled:
        STREAMS_CLOSED_SLOW.inc((transport,))


def received_at_s(rendered: str) -> float:
    """A rendered message's ``received_at`` in seconds since the epoch (NaN if it is not there)."""
    # It ends '"received_at":"<27 chars>","persisted_at":"<27 chars>"}': read it without parsing.
    try:
        return _epoch_s(rendered[-74:-47])
    except ValueError:
        return float("nan")


def _seconds_between(earlier: str, later: str) -> float:
    # Both are "YYYY-MM-DDTHH:MM:SS.ffffffZ"; on the same day the clock fields suffice (5x faster).
    if earlier[:10] == later[:10]:
        return _day_s(later) - _day_s(earlier)
    return _epoch_s(later) - _epoch_s(earlier)


def _day_s(timestamp: str) -> float:
    return int(timestamp[11:13]) * 3600 + int(timestamp[14:16]) * 60 + float(timestamp[17:26])


def _epoch_s(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


# --- flushing to Redis ------------------------------------------------------------------------


@dataclass
class Reporter:
    """Adds this process's counts to Redis every second (see the module docstring)."""

    redis: ArqRedis
    role: str  # "web" or "worker"
    interval_s: float = FLUSH_INTERVAL_S

    def __post_init__(self) -> None:
        self.process = f"{self.role}:{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Report every ``interval_s`` until :meth:`stop`."""
        if _enabled:
            self._task = asyncio.create_task(self._run(), name="metrics-reporter")

    async def stop(self) -> None:
        """Stop reporting, after one last report (this process then no longer counts as live)."""
        if self._task is None:
            return
        await cancel_and_wait([self._task])
        self._task = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                await self.flush(final=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                async with asyncio.timeout(_REDIS_TIMEOUT_S):
                    await self.flush()
            except Exception as exc:  # noqa: BLE001 - counts wait for the next try
                logger.debug("metrics not reported: %s", exc)

    async def flush(self, *, final: bool = False) -> None:
        """Add what was counted since the last flush to Redis (kept for next time on failure)."""
        async with self._lock:
            deltas: list[tuple[str, int | float]] = []
            for metric in (*_COUNTERS, *_HISTOGRAMS):
                deltas.extend(metric.drain())
            gauges = {field: value for gauge in _GAUGES for field, value in gauge.snapshot()}
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for field, amount in deltas:
                        if isinstance(amount, int):
                            pipe.hincrby(TOTALS_KEY, field, amount)
                        elif amount:
                            pipe.hincrbyfloat(TOTALS_KEY, field, amount)
                    key = PROCESS_KEY_PREFIX + self.process
                    if final:
                        pipe.delete(key)
                        pipe.zrem(PROCESSES_KEY, self.process)
                    else:
                        pipe.hset(key, mapping={"role": self.role, **gauges})
                        pipe.expire(key, PROCESS_TTL_S)
                        pipe.zadd(PROCESSES_KEY, {self.process: time.time()})
                    await pipe.execute()
            except BaseException:
                _restore(deltas)
                raise


def _restore(deltas: list[tuple[str, int | float]]) -> None:
    by_name = {metric.name: metric for metric in (*_COUNTERS, *_HISTOGRAMS)}
    for field, amount in deltas:
        name, labels, part = field.split("|")
        values = tuple(labels.split(",")) if labels else ()
        metric = by_name[name]
        if isinstance(metric, _Counter):
            metric.inc(values, int(amount))
        else:
            counts = metric.pending.setdefault(values, [0] * (len(metric.bounds) + 2))
            counts[-1 if part == "sum" else int(part[1:])] += amount


# --- the scrape ---------------------------------------------------------------------------------


async def queue_state(redis: ArqRedis) -> tuple[int, float | None]:
    """Messages queued or being stored now (every document of a batch), and the age in seconds of
    the oldest job (None when empty)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(QUEUE_KEY)
        pipe.zrange(QUEUE_KEY, 0, 0, withscores=True)
        pipe.get(bus.BATCHED_EXTRA_KEY)  # a bulk write's job holds all its documents
        jobs, oldest, extra = await pipe.execute()
    depth = int(jobs) + int(extra or 0)
    if not oldest:
        return depth, None
    # A job's score is when it became due (enqueue time, or a retry's deferred time), in ms.
    return depth, max(0.0, time.time() - float(oldest[0][1]) / 1000)


async def exposition(redis: ArqRedis, reporter: Reporter | None) -> bytes:
    """The whole pipeline's metrics in Prometheus text format."""
    if reporter is not None:
        await reporter.flush()  # this process's own latest counts first
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(TOTALS_KEY)
        pipe.zremrangebyscore(PROCESSES_KEY, "-inf", now - PROCESS_TTL_S)
        pipe.zrange(PROCESSES_KEY, 0, -1)
        pipe.hlen(bus.FAILED_KEY)
        totals_raw, _, processes, failed_now = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for process in processes:
            pipe.hgetall(PROCESS_KEY_PREFIX + process.decode())
        live = await pipe.execute()
    depth, oldest_age_s = await queue_state(redis)
    totals = {key.decode(): float(value) for key, value in totals_raw.items()}
    snapshot = _Snapshot(
        totals, [_decode(report) for report in live if report], depth, oldest_age_s, failed_now
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(snapshot)
    return generate_latest(registry)


def _decode(report: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in report.items()}


class _Snapshot(Collector):
    """Metric families from what Redis held at the scrape."""

    def __init__(
        self,
        totals: dict[str, float],
        processes: list[dict[str, str]],
        depth: int,
        oldest_age_s: float | None,
        failed_now: int,
    ) -> None:
        self.totals, self.processes = totals, processes
        self.depth, self.oldest_age_s, self.failed_now = depth, oldest_age_s, failed_now

    def collect(self) -> Iterator[Any]:
        by_metric: dict[str, dict[tuple[str, ...], dict[str, float]]] = {}
        for field, value in self.totals.items():
            name, labels, part = field.split("|")
            values = tuple(labels.split(",")) if labels else ()
            by_metric.setdefault(name, {}).setdefault(values, {})[part] = value
        for counter in _COUNTERS:
            family = CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
            series = _with_presets(by_metric.get(counter.name, {}), counter.labels)
            for values, parts in sorted(series.items()):
                family.add_metric(list(values), parts.get("n", 0.0))
            yield family
        for histogram in _HISTOGRAMS:
            family_h = HistogramMetricFamily(histogram.name, histogram.help, labels=histogram.labels)
            series = _with_presets(by_metric.get(histogram.name, {}), histogram.labels)
            for values, parts in sorted(series.items()):
                cumulative, buckets = 0.0, []
                for index, bound in enumerate((*histogram.bounds, float("inf"))):
                    cumulative += parts.get(f"b{index}", 0.0)
                    buckets.append((_le(bound), cumulative))
                family_h.add_metric(list(values), buckets, parts.get("sum", 0.0))
            yield family_h
        for gauge in _GAUGES:
            family_g = GaugeMetricFamily(gauge.name, gauge.help, labels=gauge.labels)
            sums: dict[tuple[str, ...], float] = dict.fromkeys(_presets(gauge.labels), 0.0)
            for report in self.processes:
                for field, reported in report.items():
                    name, labels, _ = (*field.split("|"), "", "")[:3]
                    if name == gauge.name:
                        key = tuple(labels.split(",")) if labels else ()
                        sums[key] = sums.get(key, 0.0) + float(reported)
            for values, total in sorted(sums.items()):
                family_g.add_metric(list(values), total)
            yield family_g
        roles = GaugeMetricFamily(
            "pipeline_processes", "Processes reporting metrics now, by role.", labels=["role"]
        )
        for role in ("web", "worker"):
            roles.add_metric([role], sum(1 for report in self.processes if report.get("role") == role))
        yield roles
        yield GaugeMetricFamily("pipeline_queue_depth", "Jobs queued or in progress now.", value=self.depth)
        yield GaugeMetricFamily(
            "pipeline_queue_oldest_age_seconds",
            "Age of the oldest queued job (since it became due); 0 when the queue is empty.",
            value=self.oldest_age_s or 0.0,
        )
        yield GaugeMetricFamily(
            "pipeline_failed_messages",
            "Messages recorded as failed now, waiting for `python run.py retry-failed`.",
            value=self.failed_now,
        )


def _presets(labels: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    # Series shown (as 0) before anything was counted, so that dashboards find them at once.
    if labels == ():
        return ((),)
    if labels == ("transport",):
        return (("ws",), ("sse",))
    return ()


def _with_presets(
    series: dict[tuple[str, ...], dict[str, float]], labels: tuple[str, ...]
) -> dict[tuple[str, ...], dict[str, float]]:
    return {**{values: {} for values in _presets(labels)}, **series}


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]
