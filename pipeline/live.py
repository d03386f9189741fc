"""Live streams: WebSocket (``/ws``) and Server-Sent Events (``/events``).

Both share :func:`follow`: replay what is stored after the client's ``seq`` from the
database, subscribe to the hub, replay once more to close the race between the two, then
pass on live deliveries, dropping any ``seq`` already sent. Each stream therefore sees
strictly increasing ``seq``, none twice and none missed, whichever process it reaches.

A stream narrowed with ``?channel=`` (repeatable) gets the same from its channels only: the
replay reads just those channels from the database, and the hub's subscription skips the rest.
``seq`` is global, so such a stream sees increasing, not consecutive, numbers.

The WebSocket writer uses hypercorn's internals (``WSStream``, its ``send``, ``stream_id`` and
``closed``, the ``Data`` event, ``send.__self__``): ``contracts.py`` lists them and checks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs

from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import WSStream
from quart import Blueprint, Response, request

from . import channels as channel_names
from . import metrics
from .asgi import Receive, Scope, Send
from .hub import Closed, Delivery, Overflow, deliveries, websocket_frame
from .problems import Problem, problem_document
from .services import Services, services
from .store import Store

logger = logging.getLogger(__name__)
blueprint = Blueprint("live", __name__)

_REPLAY_PAGE = 1000
# RFC 6455 §7.4.1: 1001 "going away" (server stopping), 1013 "try again later" (too slow).
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
_TOO_SLOW = "too slow; resume with ?after=<last seq>"
_GOING_AWAY = "server going away; resume with ?after=<last seq>"


async def follow(
    found: Services, after: int | None, channels: frozenset[str] | None = None
) -> AsyncGenerator[list[Delivery] | None, None]:
    """Batches of deliveries for one stream (of ``channels``; None: all), in ``seq`` order;
    None when a ping is due.

    Raises Overflow when the stream's buffer overflows and Closed when the hub stops.
    (Response bodies run outside the request context, so the services come as an argument.)
    """
    store, hub, interval_s = found.store, found.hub, found.settings.ping_interval_s
    sent = after or 0
    if after is not None:
        async for batch in _replay(store, sent, channels):
            yield batch
            sent = batch[-1].seq
    async with hub.subscribe(channels) as subscription:
        if after is None:
            sent = subscription.start_seq
        else:
            async for batch in _replay(store, sent, channels):
                yield batch
                sent = batch[-1].seq
        next_ping = time.monotonic() + interval_s
        while True:
            batch = await subscription.wait(max(0.0, next_ping - time.monotonic()))
            fresh = [item for item in batch if item.seq > sent]
            if fresh:
                yield fresh
                sent = fresh[-1].seq
            if time.monotonic() >= next_ping:
                yield None
                next_ping = time.monotonic() + interval_s


async def _replay(store: Store, after: int, channels: frozenset[str] | None) -> AsyncIterator[list[Delivery]]:
    while True:
        page = await store.after(after, _REPLAY_PAGE, channels=channels)
        if page:
            yield deliveries(page)
            after = page[-1].seq
        if len(page) < _REPLAY_PAGE:
            return


def _channels(query_string: bytes) -> frozenset[str] | None:
    """The channels a stream's ``?channel=`` parameters name (None: all), each checked (400)."""
    # Blank values kept: "?channel=" names an empty channel, which is a 400, not "all".
    query = parse_qs(query_string.decode("utf-8", "replace"), keep_blank_values=True)
    return channel_names.check_filter(query.get("channel", []))


def _after(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, f"{name} must be a whole number (a seq), got {raw!r}.") from None
    if value < 0:
        raise Problem(400, f"{name} must be at least 0, got {value}.")
    return value


def _ping(found: Services) -> str:
    return f'{{"event":"ping","data":{{"seq":{found.hub.last_seq}}}}}'


async def serve_websocket(found: Services, scope: Scope, receive: Receive, send: Send) -> None:
    """The WebSocket stream (``/ws``), at the ASGI level in front of Quart (see ``front.ROUTES``):
    ``{"event": "message"|"ping", "data": ...}`` text frames.

    Every frame a stream sends is the same for all its subscribers, so the hub encodes it once
    and this writes those bytes straight to hypercorn's stream, skipping Quart and re-encoding
    (and per-connection compression: a server may always send a frame uncompressed, RFC 7692
    §6). Where the server is not hypercorn it falls back to plain ASGI messages, and says so:
    :func:`websocket_writer_in_use` (``/healthz``) and a log line at first use.
    """
    if (await receive())["type"] != "websocket.connect":
        return
    query = parse_qs(scope["query_string"].decode("latin-1"))
    try:
        after = _after(query.get("after", [None])[0], "after")
        channels = _channels(scope["query_string"])
    except Problem as problem:
        await _refuse(scope, send, problem)
        return
    await send({"type": "websocket.accept"})
    write = _frame_writer(send)
    streaming = asyncio.create_task(_stream_frames(found, after, write, send, channels))
    # The client may go away at any time; then the stream (and its subscription) must end.
    listening = asyncio.create_task(_until_disconnect(receive))
    metrics.stream_opened("ws")
    try:
        await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        metrics.stream_closed("ws")
        for task in (streaming, listening):
            task.cancel()
        outcomes = await asyncio.gather(streaming, listening, return_exceptions=True)
    for outcome in outcomes:
        # A connection that went away is ordinary; anything else is a bug worth a traceback.
        # (Returning without a close makes hypercorn close the socket with 1011.)
        if isinstance(outcome, Exception) and not isinstance(outcome, ConnectionError):
            logger.error("WebSocket stream failed", exc_info=outcome)


async def _stream_frames(
    found: Services, after: int | None, write: FrameWriter, send: Send, channels: frozenset[str] | None
) -> None:
    try:
        async with contextlib.aclosing(follow(found, after, channels)) as stream:
            async for batch in stream:
                if batch is None:
                    ping = _ping(found)
                    await write([(websocket_frame(ping), ping)])
                else:
                    await write([(item.ws_frame, item.ws_text) for item in batch])
                    metrics.delivered("ws", batch)
    except Overflow:
        metrics.closed_slow("ws")
        await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER, "reason": _TOO_SLOW})
    except Closed:
        await send({"type": "websocket.close", "code": CLOSE_GOING_AWAY, "reason": _GOING_AWAY})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "websocket.disconnect":
        pass  # clients have nothing to say (hypercorn caps the size of a message; web.py)


# Writes frames, each given as its encoded bytes and its text.
FrameWriter = Callable[[list[tuple[bytes, str]]], Awaitable[None]]


WRITER_RAW = "hypercorn-raw"  # each frame's bytes, encoded once, straight to hypercorn's stream
WRITER_ASGI = "asgi"  # plain ASGI messages: each frame re-encoded for each connection
_writer_in_use: str | None = None


def websocket_writer_in_use() -> str | None:
    """The writer this process's WebSocket streams use (None before the first stream)."""
    return _writer_in_use


def _note_writer(writer: str, send: Send) -> None:
    global _writer_in_use
    if _writer_in_use == writer:
        return
    _writer_in_use = writer
    if writer == WRITER_RAW:
        logger.info("WebSocket frames are written by the %s writer", writer)
    else:
        # Under hypercorn this means its internals changed (see contracts.py): still correct,
        # but every frame is encoded once per connection again.
        logger.warning(
            "WebSocket frames are written by the %s writer: the server's send (%r) is not "
            "hypercorn's WSStream, so each frame is encoded once per connection",
            writer,
            send,
        )


def _frame_writer(send: Send) -> FrameWriter:
    stream = getattr(send, "__self__", None)
    if isinstance(stream, WSStream):
        _note_writer(WRITER_RAW, send)

        async def write_frames(frames: list[tuple[bytes, str]]) -> None:
            if stream.closed:
                raise ConnectionError("the WebSocket is closed")
            # Whatever queued up for this connection goes out in one write.
            data = frames[0][0] if len(frames) == 1 else b"".join(frame for frame, _ in frames)
            await stream.send(Data(stream_id=stream.stream_id, data=data))

        return write_frames

    _note_writer(WRITER_ASGI, send)

    async def send_texts(frames: list[tuple[bytes, str]]) -> None:
        for _, text in frames:
            await send({"type": "websocket.send", "text": text})

    return send_texts


async def _refuse(scope: Scope, send: Send, problem: Problem) -> None:
    """Answer the handshake with an HTTP problem (the ASGI websocket.http.response extension)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = problem_document(problem.status, problem.detail, problem.extensions, problem.kind)
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


@blueprint.get("/events")
async def events() -> Response:
    """Server-Sent Events stream (``id: <seq>``, ``event: message``, ``: ping``)."""
    # (Origin and tokens were checked before this runs: see access.py.)
    # The browser's EventSource sends Last-Event-ID on reconnect (HTML Living Standard §9.2).
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id:
        after = _after(last_event_id, "Last-Event-ID")
    else:
        after = _after(request.args.get("after"), "after")
    channels = _channels(request.query_string)
    found = services()

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        metrics.stream_opened("sse")
        try:
            async with contextlib.aclosing(follow(found, after, channels)) as deliveries_:
                async for batch in deliveries_:
                    if batch is None:
                        yield b": ping\n\n"
                    else:
                        yield b"".join(item.sse_frame for item in batch)
                        metrics.delivered("sse", batch)
        except (Overflow, Closed) as ended:
            # Ending the response makes EventSource reconnect with Last-Event-ID.
            if isinstance(ended, Overflow):
                metrics.closed_slow("sse")
        finally:
            metrics.stream_closed("sse")

    response = Response(
        stream(),
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None
    return response
