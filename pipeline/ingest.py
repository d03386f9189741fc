"""Ingest: accepting one JSON document.

:func:`accept` is what ``POST``/``PUT /messages`` does: validate the body, queue it, and say
what to answer (after :func:`check_idempotency_key`; ``access`` checked the token before);
:func:`accept_batch` does the same for a bulk write (``Content-Type: application/x-ndjson``, see
``bulk.py``).
:func:`serve_ingest` is the route itself, at the ASGI level, in front of Quart (see
``front.ROUTES``): Quart's per-request work was about 40% of the web process's CPU per message.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson

from . import bulk, bus, channels, metrics, shedding
from .asgi import Receive, Scope, Send
from .bounds import bodies_in_flight
from .messages import DEFAULT_CHANNEL, InvalidBody, new_id, parse_body, utc_timestamp
from .problems import Problem, problem_document
from .services import Services
from .store import TRANSIENT_ERRORS

# Writes to one channel; front.ROUTES serves it with the paths that write to "default".
CHANNEL_INGEST_PATH = "/channels/<name>/messages"
_CHANNEL_PREFIX, _CHANNEL_SUFFIX = CHANNEL_INGEST_PATH.split("<name>")
RETRY_AFTER_S = "2"
MAX_IDEMPOTENCY_KEY_CHARS = 255
BODY_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 1.0
_SETTLE_ERRORS: tuple[type[BaseException], ...] = (*bus.REDIS_ERRORS, *TRANSIENT_ERRORS, TimeoutError)


@dataclass
class Answer:
    """An HTTP answer: status, JSON body and extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


async def _surely_not_queued(found: Services, message_id: str) -> bool | None:
    """After an unclear enqueue: True if the message is not queued and never will be (its
    deadline has passed: answer 503), False if it is queued or stored after all (answer 202),
    None if that cannot be told either. Redis first: a job leaves it only once its row is
    committed, so looking in that order cannot miss it."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            if await bus.job_exists(found.redis, message_id):
                return False
            return await found.store.get(message_id) is None
    except _SETTLE_ERRORS:
        return None


async def _settle(found: Services, exc: bus.Unavailable, message_id: str, noun: str) -> None:
    """After a failed enqueue: return if ``message_id`` was queued after all (answer 202), raise
    503 if it surely was not, or 503 ``outcome-unknown`` if that cannot be told."""
    not_queued = True if exc.outcome_known else await _surely_not_queued(found, message_id)
    if not_queued is True:
        raise unavailable("The queue (Redis)") from None
    if not_queued is None:
        raise Problem(
            503,
            f"Redis stopped answering while the {noun} was being queued: it may or may not have "
            "been queued. Send it again with the same Idempotency-Key to have it stored exactly once.",
            headers={"Retry-After": RETRY_AFTER_S},
            extensions={"outcome": "unknown"},
            kind="outcome-unknown",
        ) from None


def unavailable(what: str, kind: str = "redis-unavailable") -> Problem:
    """503: a dependency cannot take the request now; nothing was done."""
    return Problem(
        503, f"{what} is unavailable; try again shortly.", headers={"Retry-After": RETRY_AFTER_S}, kind=kind
    )


def check_idempotency_key(key: str | None) -> str | None:
    """The ``Idempotency-Key`` header if it is well formed (400 otherwise)."""
    if key is not None and (not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable()):
        raise Problem(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters.")
    return key


def channel_of(path: str) -> str:
    """The channel a write to ``path`` goes to (not yet checked): ``<name>`` of
    ``/channels/<name>/messages``, ``default`` on the paths from before channels."""
    if path.startswith(_CHANNEL_PREFIX) and path.endswith(_CHANNEL_SUFFIX):
        return path[len(_CHANNEL_PREFIX) : -len(_CHANNEL_SUFFIX)]
    return DEFAULT_CHANNEL


async def accept(
    found: Services, body: bytes, idempotency_key: str | None, channel: str = DEFAULT_CHANNEL
) -> Answer:
    """Validate and queue one document (headers and channel already checked); raise Problem on refusal."""
    try:
        payload = parse_body(body)
    except InvalidBody as exc:
        raise Problem(400, str(exc)) from None
    await shedding.check(found.redis, found.settings.max_queue_depth)
    message_id, received_at = new_id(), utc_timestamp()
    try:
        accepted = await found.enqueuer.enqueue(
            message_id, payload, received_at, channel=channel, idempotency_key=idempotency_key, body=body
        )
    except bus.Unavailable as exc:
        await _settle(found, exc, message_id, "message")
        accepted = bus.Accepted(message_id, received_at)
    except bus.IdempotencyConflict as exc:
        raise Problem(422, f"This Idempotency-Key was used for message {exc} with another body.") from None
    document = {"id": accepted.id, "status": "queued", "received_at": accepted.received_at}
    return Answer(202, orjson.dumps(document), {"Location": f"/messages/{accepted.id}"})


async def accept_batch(
    found: Services, body: bytes, idempotency_key: str | None, channel: str = DEFAULT_CHANNEL
) -> Answer:
    """Validate every line of a bulk write (SPEC §12) and queue the batch as one job, or raise
    Problem and queue nothing."""
    payloads = bulk.documents(body)
    await shedding.check(found.redis, found.settings.max_queue_depth, documents=len(payloads))
    batch_id, received_at = new_id(), utc_timestamp()
    message_ids = [new_id() for _ in payloads]
    try:
        accepted = await found.enqueuer.enqueue_batch(
            batch_id,
            message_ids,
            payloads,
            received_at,
            channel=channel,
            idempotency_key=idempotency_key,
            body=body,
        )
    except bus.Unavailable as exc:
        # The batch is one job, stored in one transaction: its first id tells about all of them.
        await _settle(found, exc, message_ids[0], "batch")
        accepted = bus.AcceptedBatch(message_ids, received_at)
    except bus.QueueBehind:
        raise Problem(
            503,
            f"Storage is behind (the oldest queued message has waited over {bus.MAX_QUEUE_AGE_MS} ms); "
            "nothing was queued. Try again shortly.",
            headers={"Retry-After": "1"},
            kind="queue-behind",
        ) from None
    except bus.IdempotencyConflict as exc:
        raise Problem(422, f"This Idempotency-Key was used for request {exc} with another body.") from None
    document = {"ids": accepted.ids, "status": "queued", "received_at": accepted.received_at}
    return Answer(202, orjson.dumps(document))


async def serve_ingest(found: Services, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST``/``PUT`` on an ingest path, at the ASGI level (``front.ROUTES`` says which paths)."""
    started_s = time.perf_counter()
    body: bytes | None = None
    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
    try:
        key = check_idempotency_key(headers.get("idempotency-key"))
        channel = channels.check(channel_of(scope["path"]))
        size = _reserve_body(found, headers.get("content-length"))
        try:
            body = await _read_body(receive, found.settings.max_body_bytes)
            if body is None:
                return  # the client went away
            if bulk.is_bulk(headers.get("content-type")):
                answer = await accept_batch(found, body, key, channel)
            else:
                answer = await accept(found, body, key, channel)
        finally:
            bodies_in_flight.release(size)
    except Problem as problem:
        answer = Answer(
            problem.status,
            problem_document(problem.status, problem.detail, problem.extensions, problem.kind),
            problem.headers,
            "application/problem+json",
        )
    raw_headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        *((name.lower().encode(), value.encode()) for name, value in answer.headers.items()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": answer.body})
    metrics.ingested(answer.status, None if body is None else len(body), started_s)


def _reserve_body(found: Services, content_length: str | None) -> int:
    """Reserve room for the body among all requests in progress (MAX_BODIES_IN_FLIGHT_BYTES):
    past it, 503 before a byte of the body is read. Returns the bytes reserved."""
    limit = found.settings.max_body_bytes
    declared = int(content_length) if content_length is not None and content_length.isdigit() else None
    if declared is not None and declared > limit:
        raise Problem(413, f"The body is larger than {limit} bytes (MAX_BODY_BYTES).")
    # A chunked body may be as large as the limit; reserve that much for it.
    size = limit if declared is None else declared
    bodies_in_flight.reserve(size, found.settings.max_bodies_in_flight_bytes)
    return size


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    too_large = Problem(413, f"The body is larger than {limit} bytes (MAX_BODY_BYTES).")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise Problem(408, f"The body did not arrive within {BODY_TIMEOUT_S:.0f} seconds.") from None
