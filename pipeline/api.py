"""HTTP routes: reads, health and the page. Input is validated here, at the edge.

(Ingest is served in front of Quart: see ``front.ROUTES`` and ``ingest.serve_ingest``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import orjson
from quart import Blueprint, Response, render_template, request

from . import bus, channels, export, live, metrics
from .bounds import whole_number
from .ingest import unavailable
from .messages import canonical_id, render
from .ops import retention
from .problems import Problem
from .services import services
from .store import TRANSIENT_ERRORS

blueprint = Blueprint("api", __name__)

_PAGE_ROWS = 1000
_HEALTH_TIMEOUT_S = 2.0
T = TypeVar("T")


def _int_arg(name: str, *, low: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    value = whole_number(raw, f"Query parameter {name!r}")
    if value < low:
        raise Problem(400, f"Query parameter {name!r} must be at least {low}, got {value}.")
    return value


@blueprint.get("/messages")
@blueprint.get("/json_dummy")
@blueprint.get("/json_dummy/")
async def list_messages() -> Response:
    """Stored messages as one JSON array, ascending ``seq``, streamed page by page."""
    return await _list(channels.check_filter(request.args.getlist("channel")))


@blueprint.get("/channels/<name>/messages")
async def list_channel_messages(name: str) -> Response:
    """One channel's stored messages, as ``GET /messages`` (same parameters)."""
    return await _list(frozenset({channels.check(name)}))


@blueprint.get("/channels")
async def list_channels() -> Response:
    """Every channel holding messages: ``[{"name", "count", "latest_seq", "latest_at"}]``."""
    try:
        found = await services().store.channels()
    except TRANSIENT_ERRORS:
        raise unavailable("The database") from None
    return _json([dataclasses.asdict(stats) for stats in found])


async def _list(narrow: frozenset[str] | None) -> Response:
    after = _int_arg("after", low=0) or 0
    limit = _int_arg("limit", low=0)
    tail = _int_arg("tail", low=0)
    # ?before=<seq>: only messages below it; with limit (or tail), the ones just below it.
    before = _int_arg("before", low=0)
    below = None if before is None else before - 1
    if tail is None and before is not None and limit is not None:
        tail = limit
    store = services().store
    try:
        if tail is not None:
            # Streamed like any read: from just before the newest ``tail``, page by page.
            limit = tail if limit is None else min(tail, limit)
            after, until, first = await store.tail_page(
                limit, _page_size(limit), after=after, below=below, channels=narrow
            )
        else:
            until = await store.latest_seq()
            until = until if below is None else min(until, below)
            first = await store.after(after, _page_size(limit), until, channels=narrow)
    except TRANSIENT_ERRORS:
        raise unavailable("The database", "database-unavailable") from None

    framing = export.framing(request.headers.get("Accept"))

    async def pages() -> AsyncIterator[bytes]:
        page, sent = first, 0
        yield framing.start
        while page:
            chunk = framing.join(render(message) for message in page)
            yield (chunk if sent == 0 else framing.between + chunk).encode()
            sent += len(page)
            # Pages are bounded by bytes as well as rows (Store.after): only an empty one ends.
            if limit is not None and sent >= limit:
                break
            remaining = None if limit is None else limit - sent
            page = await store.after(page[-1].seq, _page_size(remaining), until, channels=narrow)
        yield framing.end

    # The database's epoch (SPEC §10): a client compares it with the streams' to spot a replacement.
    headers = {"Vary": "Accept", live.EPOCH_HEADER: services().epoch}
    response = Response(pages(), content_type=framing.content_type, headers=headers)
    response.timeout = None
    return response


def _page_size(remaining: int | None) -> int:
    return _PAGE_ROWS if remaining is None else min(_PAGE_ROWS, remaining)


@blueprint.get("/messages/<message_id>")
@blueprint.get("/json_dummy/<message_id>")
async def get_message(message_id: str) -> Response:
    """One message: 200 stored, 202 still queued, 404 unknown."""
    canonical = canonical_id(message_id)
    if canonical is None:
        raise Problem(404, f"No message has the id {message_id!r} (ids are UUIDs).")
    found = services()
    try:
        # Ask Redis first: the job disappears only after its row is committed, so a job that
        # is gone now means the database read below sees the row.
        queued = await bus.job_exists(found.redis, canonical)
    except bus.REDIS_ERRORS:
        queued = False
    try:
        message = await found.store.get(canonical)
    except TRANSIENT_ERRORS:
        raise unavailable("The database", "database-unavailable") from None
    if message is not None:
        return Response(render(message), content_type="application/json")
    if queued:
        return _json({"id": canonical, "status": "queued"}, 202)
    try:
        failed = await bus.failure(found.redis, canonical)
    except bus.REDIS_ERRORS:
        raise unavailable("Redis") from None
    if failed is not None:
        return _json({"id": canonical, "status": "failed", "error": failed["error"]}, 202)
    raise Problem(404, f"No message has the id {canonical}.")


def _json(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status=status, content_type="application/json")


@blueprint.get("/healthz")
async def healthz() -> Response:
    """Liveness and dependencies: Redis, the database, a live worker."""
    found = services()

    async def redis_check() -> dict[str, object]:
        await found.redis.ping()
        worker_alive, (queued, oldest_age_s), failed = await asyncio.gather(
            bus.worker_alive(found.redis), metrics.queue_state(found.redis), bus.failure_count(found.redis)
        )
        age = None if oldest_age_s is None else round(oldest_age_s, 3)
        return {"worker": worker_alive, "queued": queued, "failed": failed, "oldest_age_s": age}

    async def database_check() -> int:
        return await found.store.latest_seq()

    redis_result, database_result = await asyncio.gather(
        _within(_HEALTH_TIMEOUT_S, redis_check()),
        _within(_HEALTH_TIMEOUT_S, database_check()),
        return_exceptions=True,
    )
    redis_ok = not isinstance(redis_result, BaseException)
    database_ok = not isinstance(database_result, BaseException)
    worker_ok = redis_ok and bool(redis_result["worker"])  # type: ignore[index]
    failed = redis_result["failed"] if redis_ok else 0  # type: ignore[index]
    if not (redis_ok and database_ok and worker_ok):
        status = "unavailable"
    else:
        # Messages whose store gave up are waiting for an operator (python run.py retry-failed).
        status = "degraded" if failed else "ok"
    report: dict[str, object] = {
        "status": status,
        "redis": {"ok": redis_ok} if redis_ok else {"ok": False, "error": _describe(redis_result)},
        "database": (
            {"ok": True, "latest_seq": database_result}
            if database_ok
            else {"ok": False, "error": _describe(database_result)}
        ),
        "worker": {"ok": worker_ok},
        "live": {
            "subscribers": found.hub.subscriber_count,
            "last_seq": found.hub.last_seq,
            "websocket_writer": live.websocket_writer_in_use(),
        },
    }
    if redis_ok:
        report["queue"] = {key: redis_result[key] for key in ("queued", "failed", "oldest_age_s")}  # type: ignore[index]
    report["retention"] = retention(found.settings)
    return _json(report, 503 if status == "unavailable" else 200)


async def _within(seconds: float, check: Awaitable[T]) -> T:
    # Not asyncio.wait_for: it runs the check as another task and awaits it (see tasks.py).
    async with asyncio.timeout(seconds):
        return await check


def _describe(error: object) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@blueprint.get("/")
async def page() -> Response:
    """The live page."""
    html = await render_template("index.html")
    return Response(
        html,
        content_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": (
                "default-src 'self'; style-src 'self'; connect-src 'self'; "
                "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
            )
        },
    )
