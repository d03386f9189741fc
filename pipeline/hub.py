"""The per-process hub: one Redis subscription fanned out to every open stream.

The database is the source of truth and pub/sub the fast path. The hub keeps ``last_seq``,
the newest message it has handed out, and only ever hands out ``last_seq + 1, + 2, ...``:
a notification that skips ahead (out of order from several workers, or one that was lost
while Redis was away) makes it read the missing range from the database first, and a
periodic check of the database's newest ``seq`` catches anything whose notification never
came. Since ``seq`` grows in commit order, whatever the database holds below a visible
``seq`` is final, so these reads never miss a message.

Each stream owns a bounded :class:`Subscription`. Messages are encoded once per process into
the WebSocket and SSE frames every subscriber shares. A subscription narrowed to some channels
(SPEC §9) skips the others' messages with one set lookup each, before they count against its
buffer; the hub itself follows every channel, since ``seq`` is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import NamedTuple

from arq.connections import ArqRedis

from . import bus
from .bulk import MAX_DOCUMENTS
from .messages import Message, channel_of, render, seq_of, unpack
from .store import TRANSIENT_ERRORS, Store
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# A stream's bound holds two full bulk batches (SPEC §12), so a client that keeps reading is
# never closed as slow because a batch arrived at once; see :func:`buffer_bytes`.
MAX_BUFFER_MESSAGES = 2 * MAX_DOCUMENTS
MAX_BUFFER_BYTES = 1024 * 1024
# What a message's representation adds to its payload (id, seq, channel, two times), rounded up.
_ENVELOPE_BYTES = 256
_FILL_PAGE = 1000
_SSE_LINE_END = re.compile("\r\n|\r|\n")


class Delivery(NamedTuple):
    """One stored message, ready to send on either transport."""

    seq: int
    text: str
    ws_text: str
    ws_frame: bytes
    sse_frame: bytes
    channel: str


# Writes deliveries to a connection without waiting, or says False (it would have to wait).
DirectWriter = Callable[[list[Delivery]], bool]


def websocket_frame(text: str) -> bytes:
    """A complete unfragmented, unmasked text frame (RFC 6455 §5.2), as a server sends it.

    A server's frames carry no mask, so the same bytes serve every connection.
    """
    data = text.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + data


def delivery(rendered: str, seq: int | None = None, channel: str | None = None) -> Delivery:
    """Wrap a rendered message in its WebSocket and SSE frames."""
    seq = seq_of(rendered) if seq is None else seq
    channel = channel_of(rendered) if channel is None else channel
    ws_text = f'{{"event":"message","data":{rendered}}}'
    if "\n" in rendered or "\r" in rendered:
        # A payload's whitespace may hold line breaks; SSE needs one data: line per line. Split
        # only at SSE's own line ends (HTML §9.2.5): str.splitlines() would also break at
        # U+2028, U+2029 and U+0085, which JSON strings may hold raw.
        data = "".join(f"data: {line}\n" for line in _SSE_LINE_END.split(rendered))
    else:
        data = f"data: {rendered}\n"
    sse_frame = f"id: {seq}\nevent: message\n{data}\n".encode()
    return Delivery(seq, rendered, ws_text, websocket_frame(ws_text), sse_frame, channel)


def deliveries(messages: Iterable[Message]) -> list[Delivery]:
    """Deliveries for messages read from the database."""
    return [delivery(render(message), message.seq, message.channel) for message in messages]


def buffer_bytes(max_body_bytes: int) -> int:
    """A stream's bound in bytes: two full batches of ``max_body_bytes`` with their envelopes."""
    return max(MAX_BUFFER_BYTES, 2 * (max_body_bytes + MAX_DOCUMENTS * _ENVELOPE_BYTES))


class Overflow(Exception):
    """The subscriber fell too far behind; its stream must close (WebSocket 1013)."""


class Closed(Exception):
    """The hub is shutting down; the stream should end (WebSocket 1001)."""


class Subscription:
    """A bounded buffer of deliveries for one stream, filled by the hub.

    ``channels``: the only channels it wants (None: every channel).
    """

    def __init__(
        self,
        start_seq: int,
        max_messages: int,
        max_bytes: int,
        channels: frozenset[str] | None = None,
        backlog: Callable[[], int] | None = None,
    ) -> None:
        self.start_seq = start_seq
        self.channels = channels
        # Bytes handed to the connection that its client has not taken yet (socket buffers).
        self._backlog = backlog
        self._items: deque[Delivery] = deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self._error: Exception | None = None
        # The highest seq this stream has sent; set by its reader (see ``follow``).
        self.sent = 0
        self._direct: DirectWriter | None = None
        self._waiting = False  # the reader is parked in wait() with nothing of its own in flight

    def offer(self, items: list[Delivery], size: int) -> None:
        """Queue deliveries in ``seq`` order (``size``: the bytes of their texts), those of
        this stream's channels; past the bound the subscription fails with Overflow."""
        if self._error is not None:
            return
        if self.channels is not None:
            wanted = self.channels
            items = [item for item in items if item.channel in wanted]
            if not items:
                return
            size = sum(len(item.text) for item in items)
        if self._waiting and not self._items and self._direct is not None:
            # The reader is idle and everything before these has been written: write them now
            # instead of waking the reader (a task switch per connection per hand-out).
            if items[0].seq <= self.sent:
                items = [item for item in items if item.seq > self.sent]
                if not items:
                    return
            if self._direct(items):
                self.sent = items[-1].seq
                return
        self._items.extend(items)
        self._bytes += size
        if len(self._items) > self._max_messages or self._bytes > self._max_bytes:
            self._items.clear()
            self._error = Overflow()
        self._ready.set()

    def deliver_directly(self, write: DirectWriter) -> None:
        """From now on, while the reader waits with nothing queued, hand deliveries past
        ``sent`` to ``write`` (which writes them without waiting, or says False: then they are
        queued as usual). Deliveries stay in seq order: the reader only parks once what it
        took is written, and nothing goes direct while anything is queued."""
        self._direct = write

    def close(self) -> None:
        """End the subscription (the hub is stopping)."""
        if self._error is None:
            self._error = Closed()
        self._ready.set()

    def take_pending(self) -> list[Delivery]:
        """Everything queued now, without waiting."""
        backlog = self._backlog
        if self._error is None and backlog is not None and self._bytes + backlog() > self._max_bytes:
            # What waits for this client in the process and in its socket is over the bound:
            # it has stopped reading, even if what it was sent has left the process.
            self._items.clear()
            self._error = Overflow()
        if self._error is not None:
            raise self._error
        items = list(self._items)
        self._items.clear()
        self._bytes = 0
        self._ready.clear()
        return items

    async def wait(self, timeout_s: float | None = None) -> list[Delivery]:
        """Wait until something is queued (or ``timeout_s`` passes) and take it all."""
        if not self._items and self._error is None:
            # asyncio.timeout, not wait_for, which can swallow a cancellation on 3.11.
            self._waiting = True
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await self._ready.wait()
            finally:
                self._waiting = False
        return self.take_pending()


class Hub:
    """Owns this process's subscription to stored messages and its subscribers."""

    def __init__(
        self,
        redis: ArqRedis,
        store: Store,
        *,
        reconcile_interval_s: float = 2.0,
        max_buffer_messages: int = MAX_BUFFER_MESSAGES,
        max_buffer_bytes: int = MAX_BUFFER_BYTES,
    ) -> None:
        self._redis = redis
        self._store = store
        self._reconcile_interval_s = reconcile_interval_s
        self._max_messages = max_buffer_messages
        self._max_bytes = max_buffer_bytes
        self._subscribers: set[Subscription] = set()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.last_seq = 0
        self._outgoing: list[Delivery] = []  # handed out, not yet offered to the streams
        self._flush_scheduled = False

    async def start(self) -> None:
        """Learn where the database is, then follow Redis and the database."""
        self.last_seq = await self._store.latest_seq()
        self._tasks = [
            asyncio.create_task(
                bus.listen(self._redis, bus.MESSAGES_CHANNEL, self._on_published, on_connect=self.catch_up),
                name="hub-listen",
            ),
            asyncio.create_task(self._reconcile_forever(), name="hub-reconcile"),
        ]

    async def stop(self) -> None:
        """Stop following and end every subscription."""
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self.close_all()

    def close_all(self) -> None:
        """End every subscription, open or yet to come (streams close as "going away")."""
        self._closing = True
        for subscriber in list(self._subscribers):
            subscriber.close()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, channels: Collection[str] | None = None, backlog: Callable[[], int] | None = None
    ) -> AsyncIterator[Subscription]:
        """A subscription that receives every message (of ``channels``, None: all) after the
        hub's current ``last_seq`` (``backlog``: bytes its connection holds that the client has
        not taken yet)."""
        wanted = frozenset(channels) if channels else None
        subscription = Subscription(self.last_seq, self._max_messages, self._max_bytes, wanted, backlog)
        if self._closing:
            subscription.close()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    @property
    def subscriber_count(self) -> int:
        """How many streams are open on this process."""
        return len(self._subscribers)

    async def _on_published(self, data: bytes) -> None:
        items = [delivery(text) for text in unpack(data.decode())]
        async with self._lock:
            for item in items:
                if item.seq <= self.last_seq:
                    continue
                if item.seq > self.last_seq + 1 and not await self._fill(item.seq - 1):
                    # Never hand out past a gap; the reconcile loop fills it from the database.
                    return
                self._hand_out(item)

    async def catch_up(self) -> None:
        """Hand out whatever the database holds beyond ``last_seq``."""
        async with self._lock:
            await self._fill(None)

    async def _fill(self, until: int | None) -> bool:
        while True:
            try:
                page = await self._store.after(self.last_seq, _FILL_PAGE, until)
            except TRANSIENT_ERRORS as exc:
                logger.warning("database unavailable while catching up: %s", exc)
                return False
            if not page:  # pages are bounded by bytes too: only an empty one is the end
                return True
            for item in deliveries(page):
                self._hand_out(item)

    def _hand_out(self, item: Delivery) -> None:
        # Hand-outs wait for the end of the current turn of the event loop, so whatever
        # arrived together (a batch, several notifications read at once under load) reaches
        # each stream together: one write per connection, not one per message.
        self.last_seq = item.seq
        self._outgoing.append(item)
        if len(self._outgoing) >= MAX_DOCUMENTS:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        items, self._outgoing = self._outgoing, []
        if not items:
            return
        size = sum(len(item.text) for item in items)
        for subscriber in self._subscribers:
            subscriber.offer(items, size)

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_interval_s)
            try:
                latest = await self._store.latest_seq()
            except TRANSIENT_ERRORS as exc:
                logger.warning("database unavailable: %s", exc)
                continue
            if latest > self.last_seq:
                await self.catch_up()
