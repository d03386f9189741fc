"""Load shedding (SPEC §11): refuse writes while the queue is deeper than ``MAX_QUEUE_DEPTH``.

Accepting what cannot be stored soon only moves the failure later (and into Redis's memory), so
past the bound a write answers ``503`` + ``Retry-After`` with the problem type ``queue-full``,
distinct from ``redis-unavailable``, and queues nothing. The depth (messages queued or running:
``bus.queued_documents``, arq's queue, where jobs stay until finished, with every document of a
bulk write's job counted, SPEC §11) is read at most once a
second per process, by one request while the others use the last figure; each write this
process lets through counts towards that figure until the next read.
"""

from __future__ import annotations

import asyncio
import time

from arq.connections import ArqRedis

from . import bus
from .problems import Problem

RETRY_AFTER_S = "2"
REFRESH_INTERVAL_S = 1.0
# A depth read that takes longer is skipped (no shedding on a guess); the enqueue that follows
# finds out whether Redis is there at all.
_READ_TIMEOUT_S = 0.25


class _Depth:
    """This process's last reading of the queue depth."""

    def __init__(self) -> None:
        self.value = 0
        self.read_at = float("-inf")
        self.reading = False


_depth = _Depth()


async def check(redis: ArqRedis, max_queue_depth: int, documents: int = 1) -> None:
    """Raise 503 queue-full when the queue holds more than ``max_queue_depth`` jobs; otherwise
    count ``documents`` more towards the depth."""
    if time.monotonic() - _depth.read_at >= REFRESH_INTERVAL_S and not _depth.reading:
        await _read(redis)
    if _depth.value > max_queue_depth:
        raise Problem(
            503,
            f"The queue holds more than {max_queue_depth} messages (MAX_QUEUE_DEPTH); nothing was "
            "queued. Try again shortly.",
            headers={"Retry-After": RETRY_AFTER_S},
            kind="queue-full",
        )
    _depth.value += documents


async def _read(redis: ArqRedis) -> None:
    _depth.reading = True
    try:
        async with asyncio.timeout(_READ_TIMEOUT_S):
            _depth.value = await bus.queued_documents(redis)  # a batch counts its documents
    except Exception:  # noqa: BLE001 - unknown depth: do not shed; the enqueue will tell
        pass
    finally:
        _depth.read_at = time.monotonic()
        _depth.reading = False
