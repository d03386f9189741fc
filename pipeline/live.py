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
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import WSStream
from quart import Blueprint, Response, request
from wsproto.connection import ConnectionState as WSState

from . import channels as channel_names
from . import continuity, metrics
from .asgi import Message, Receive, Scope, Send
from .bounds import (
    SocketBacklog,
    may_block,
    open_streams,
    queued_bytes,
    reset,
    transport_of,
    whole_number,
)
from .hub import Closed, Delivery, DirectWriter, Overflow, websocket_frame
from .problems import Problem, problem_document
from .services import Services, services

logger = logging.getLogger(__name__)
blueprint = Blueprint("live", __name__)

# The database's epoch (SPEC §10), on GET /messages and the SSE response.
EPOCH_HEADER = "Pipeline-Epoch"
# RFC 6455 §7.4.1: 1001 "going away" (server stopping), 1013 "try again later" (too slow).
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
EVENTS_PATHS = frozenset({"/events"})
_TRANSPORT_KEY = "pipeline.transport"
# A client whose send buffer has not drained for this long has stopped reading (SPEC §4: closed
# within 30 s); one told it is too slow gets this long to take its close before it is cut off.
WRITE_TIMEOUT_S = 10.0
CLOSE_GRACE_S = 10.0
_TOO_SLOW = "too slow; resume with ?after=<last seq>"
_GOING_AWAY = "server going away; resume with ?after=<last seq>"


async def follow(
    found: Services,
    after: int | None,
    channels: frozenset[str] | None = None,
    epoch: str | None = None,
    backlog: Callable[[], int] | None = None,
    direct: DirectWriter | None = None,
) -> AsyncGenerator[list[Delivery] | None, None]:
    """Batches of deliveries for one stream (of ``channels``; None: all), in ``seq`` order;
    None when a ping is due. A resume first gets a ``reset`` or ``gap`` where one is due
    (``continuity``; ``epoch``: the database the client knew).

    Raises Overflow when the stream's buffer overflows (counting ``backlog()``, the bytes
    already handed to the connection but not yet taken by the client) and Closed when the hub
    stops. (Response bodies run outside the request context, so the services come as an
    argument.)

    ``direct``: once live, deliveries that arrive while this generator's consumer waits for
    the next batch go to ``direct`` instead (see ``Subscription.deliver_directly``); they are
    not yielded.
    """
    hub, interval_s = found.hub, found.settings.ping_interval_s
    opening, after = await continuity.opening(found.store, found.epoch, after, epoch)
    if opening:
        yield opening
    replay = continuity.Replay(found.store, channels)
    sent = after or 0
    if after is not None:
        async for batch in replay.pages(sent):
            yield batch
            sent = max(sent, batch[-1].seq)
    async with hub.subscribe(channels, backlog) as subscription:
        if after is None:
            sent = subscription.start_seq
        else:
            async for batch in replay.pages(sent):
                yield batch
                sent = max(sent, batch[-1].seq)
        subscription.sent = sent
        if direct is not None:
            subscription.deliver_directly(direct)
        next_ping = time.monotonic() + interval_s
        while True:
            batch = await subscription.wait(max(0.0, next_ping - time.monotonic()))
            fresh = [item for item in batch if item.seq > subscription.sent]
            if fresh:
                subscription.sent = fresh[-1].seq
                yield fresh
            if time.monotonic() >= next_ping:
                yield None
                next_ping = time.monotonic() + interval_s


def _channels(query_string: bytes) -> frozenset[str] | None:
    """The channels a stream's ``?channel=`` parameters name (None: all), each checked (400)."""
    # Blank values kept: "?channel=" names an empty channel, which is a 400, not "all".
    query = parse_qs(query_string.decode("utf-8", "replace"), keep_blank_values=True)
    return channel_names.check_filter(query.get("channel", []))


def _after(raw: str | None, name: str) -> int | None:
    return None if raw is None else whole_number(raw, name)


def _ping(found: Services) -> str:
    return f'{{"event":"ping","data":{{"seq":{found.hub.last_seq},"epoch":"{found.epoch}"}}}}'


def _epoch(raw: str | None) -> str | None:
    """The ``?epoch=`` a stream was given (any other text than this database's is a reset)."""
    return raw or None


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
    query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    try:
        after = _after(query.get("after", [None])[0], "after")
        channels = _channels(scope["query_string"])
        epoch = _epoch(query.get("epoch", [None])[0])
        give_back = open_streams.take(found.settings.max_streams, "streams")
    except Problem as problem:
        await _refuse(scope, send, problem)
        return
    try:
        await _serve_accepted(found, after, channels, epoch, receive, send)
    finally:
        give_back()


async def _serve_accepted(
    found: Services,
    after: int | None,
    channels: frozenset[str] | None,
    epoch: str | None,
    receive: Receive,
    send: Send,
) -> None:
    _offer_no_compression(send)
    await send({"type": "websocket.accept"})
    transport = transport_of(send)
    write = _frame_writer(send, transport)
    closing = asyncio.Event()  # set once this stream sends its own close
    streaming = asyncio.create_task(
        _stream_frames(found, after, write, send, transport, channels, epoch, closing)
    )
    # The client may go away at any time; then the stream (and its subscription) must end.
    listening = asyncio.create_task(_until_disconnect(receive, send, closing))
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


def _offer_no_compression(send: Send) -> None:
    """Accept no permessage-deflate: inflating a client's frame happens before the size limit
    applies, so one small frame could inflate to gigabytes (SPEC §4). Hypercorn has no setting
    for it; its handshake offers what the client asked for unless told it asked for nothing."""
    stream = getattr(send, "__self__", None)
    if isinstance(stream, WSStream):
        stream.handshake.extensions = None


async def _stream_frames(
    found: Services,
    after: int | None,
    write: FrameWriter,
    send: Send,
    transport: asyncio.Transport | None,
    channels: frozenset[str] | None,
    epoch: str | None,
    closing: asyncio.Event,
) -> None:
    backlog = None if transport is None else SocketBacklog(transport)
    direct = _direct_writer(send, transport)
    try:
        async with contextlib.aclosing(follow(found, after, channels, epoch, backlog, direct)) as stream:
            async for batch in stream:
                if batch is None:
                    ping = _ping(found)
                    await write([(websocket_frame(ping), ping)])
                else:
                    await write([(item.ws_frame, item.ws_text) for item in batch])
                    metrics.delivered("ws", batch)
    except Overflow:
        metrics.closed_slow("ws")
        closing.set()
        goodbye = send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER, "reason": _TOO_SLOW})
        await _close_stalled(transport, goodbye)
    except Closed:
        closing.set()
        await send({"type": "websocket.close", "code": CLOSE_GOING_AWAY, "reason": _GOING_AWAY})


async def _close_stalled(transport: asyncio.Transport | None, closing: Awaitable[None]) -> None:
    """Say goodbye to a client that fell behind, then make sure it is gone (see below)."""
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await closing
    except TimeoutError:
        if transport is not None:
            reset(transport)
        return
    if transport is not None:
        await _cut_off_if_stalled(transport)


async def _cut_off_if_stalled(transport: asyncio.Transport) -> None:
    """Give the client CLOSE_GRACE_S to take what waits for it, else reset the connection.

    One that does not read its socket cannot read a close either; closing the socket normally
    would leave its send queue to the kernel (an orphan, still holding megabytes), so this has
    to happen while the connection is still open."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_GRACE_S
    while queued_bytes(transport):
        if loop.time() >= deadline:
            reset(transport)
            return
        await asyncio.sleep(0.25)


# How often an idle stream checks whether hypercorn has begun closing it by itself.
_CLOSING_CHECK_S = 2.0


async def _until_disconnect(receive: Receive, send: Send, closing: asyncio.Event) -> None:
    # Clients have nothing to say (hypercorn caps the size of a message; web.py). Hypercorn
    # answers an oversized message with a close (1009) itself, but when the client's close reply
    # comes in the same read as the rest of that message it never sees the reply, so no
    # disconnect arrives: a stream whose connection is no longer open, though it did not close
    # it itself (its own close waits for a stalled client, then resets it), ends here instead.
    stream = getattr(send, "__self__", None)
    connection = getattr(stream, "connection", None) if isinstance(stream, WSStream) else None
    while True:
        try:
            async with asyncio.timeout(None if connection is None else _CLOSING_CHECK_S):
                if (await receive())["type"] == "websocket.disconnect":
                    return
        except TimeoutError:
            if connection.state is not WSState.OPEN and not closing.is_set():  # type: ignore[union-attr]
                return


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


def _is_open(stream: WSStream) -> bool:
    """Neither closed nor closing (hypercorn may have sent a close itself, e.g. 1009)."""
    return not stream.closed and stream.connection.state is WSState.OPEN


def _frame_writer(send: Send, transport: asyncio.Transport | None) -> FrameWriter:
    stream = getattr(send, "__self__", None)
    if isinstance(stream, WSStream):
        _note_writer(WRITER_RAW, send)

        async def write_frames(frames: list[tuple[bytes, str]]) -> None:
            if not _is_open(stream):
                raise ConnectionError("the WebSocket is closed")
            # Whatever queued up for this connection goes out in one write.
            data = frames[0][0] if len(frames) == 1 else b"".join(frame for frame, _ in frames)
            if not may_block(transport, len(data)):
                await stream.send(Data(stream_id=stream.stream_id, data=data))
                return
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await stream.send(Data(stream_id=stream.stream_id, data=data))
            except TimeoutError:
                # Not even our buffer drained in all that time: the client stopped reading.
                if transport is not None:
                    reset(transport)
                raise ConnectionError("the client stopped reading") from None

        return write_frames

    _note_writer(WRITER_ASGI, send)

    async def send_texts(frames: list[tuple[bytes, str]]) -> None:
        for _, text in frames:
            await send({"type": "websocket.send", "text": text})

    return send_texts


def _direct_writer(send: Send, transport: asyncio.Transport | None) -> DirectWriter | None:
    """For the raw writer: write live deliveries' frames to the connection at once, from the
    hub's hand-out, when that cannot wait (the transport's buffer is under its high-water mark
    and the connection open); otherwise say False, and the stream's own task writes it, with
    its timeout for a client that stopped reading. Under a fan-out this saves waking a task per
    connection per message, most of the web process's CPU per delivery."""
    stream = getattr(send, "__self__", None)
    if transport is None or not isinstance(stream, WSStream):
        return None

    def write_now(items: list[Delivery]) -> bool:
        if not _is_open(stream) or transport.is_closing():
            return False
        frame = items[0].ws_frame if len(items) == 1 else b"".join(item.ws_frame for item in items)
        if may_block(transport, len(frame)):
            return False
        try:
            transport.write(frame)
        except Exception:  # noqa: BLE001 - this runs in the hub's hand-out to every stream
            return False  # the stream's task meets the error itself and ends the stream
        metrics.delivered("ws", items)
        return True

    return write_now


async def _refuse(scope: Scope, send: Send, problem: Problem) -> None:
    """Answer the handshake with an HTTP problem (the ASGI websocket.http.response extension)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = problem_document(problem.status, problem.detail, problem.extensions, problem.kind)
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in problem.headers.items()]
    await send({"type": "websocket.http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def guard_events(scope: Scope, send: Send) -> Send:
    """``GET /events`` at the ASGI level (see ``front``): keep the connection's transport in the
    scope, so the stream can count what waits in its socket, and bound every write."""
    transport = transport_of(send)
    if transport is None:
        return send
    scope.setdefault("extensions", {})[_TRANSPORT_KEY] = transport

    async def bounded_send(message: Message) -> None:
        if not may_block(transport, len(message.get("body", b""))):
            await send(message)
            return
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await send(message)
        except TimeoutError:
            # The client stopped reading: cut it off; Quart then hears of the disconnect.
            reset(transport)

    return bounded_send


@blueprint.route("/events", methods=["GET", "HEAD"])
async def events() -> Response:
    """Server-Sent Events stream (``id: <seq>``, ``event: message``, ``: ping``)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    # (Origin and tokens were checked before this runs: see access.py.)
    # The browser's EventSource sends Last-Event-ID on reconnect (HTML Living Standard §9.2).
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id:
        after = _after(last_event_id, "Last-Event-ID")
    else:
        after = _after(request.args.get("after"), "after")
    channels = _channels(request.query_string)
    epoch = _epoch(request.args.get("epoch"))
    headers[EPOCH_HEADER] = services().epoch
    if request.method == "HEAD":
        # The headers a GET would get, without a subscription that nobody would read.
        return Response(b"", content_type="text/event-stream", headers=headers)
    found = services()
    give_back = open_streams.take(found.settings.max_streams, "streams")
    extensions: dict[str, Any] = request.scope.get("extensions") or {}
    transport: asyncio.Transport | None = extensions.get(_TRANSPORT_KEY)
    backlog = None if transport is None else SocketBacklog(transport)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            metrics.stream_opened("sse")
            try:
                async with contextlib.aclosing(follow(found, after, channels, epoch, backlog)) as deliveries_:
                    async for batch in deliveries_:
                        if batch is None:
                            yield b": ping\n\n"
                        else:
                            yield b"".join(item.sse_frame for item in batch)
                            metrics.delivered("sse", batch)
            except Overflow:
                # Ending the response makes EventSource reconnect with Last-Event-ID; a client
                # that does not read cannot see the end either, so it is cut off if stuck.
                metrics.closed_slow("sse")
                if transport is not None:
                    await _cut_off_if_stalled(transport)
            except Closed:
                pass
            finally:
                metrics.stream_closed("sse")
        finally:
            give_back()

    body = stream()
    # A stream that never starts (the client left at once) never runs its finally.
    weakref.finalize(body, give_back)
    response = Response(body, content_type="text/event-stream", headers=headers)
    response.timeout = None
    return response
