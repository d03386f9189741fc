"""Limits that keep one web process bounded under attack (SPEC §3 strictness, §4, §8).

- :func:`whole_number`: the one parser of numbers a client sends in a query or header.
- :class:`Slots` caps open streams; :class:`ByteBudget` caps request-body bytes in flight.
- :func:`transport_of` and :func:`queued_bytes`: how much waits for a client in this process's
  write buffer *and* in the kernel's send queue, so a client that stops reading is noticed even
  once its backlog has left the process.

Hypercorn internals relied on here (listed and checked in ``contracts.py``): an ASGI ``send``
is a bound method of hypercorn's ``HTTPStream``/``WSStream``, whose ``send`` is bound to
``H11Protocol``, whose ``send`` is bound to the asyncio ``TCPServer`` holding ``writer``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from .asgi import ASGIApp, Receive, Scope, Send
from .problems import Problem, problem_document

# SQLite and Postgres integers are signed 64-bit (SPEC §3: values up to 2^63-1).
MAX_WHOLE_NUMBER = 2**63 - 1
_MAX_DIGITS = len(str(MAX_WHOLE_NUMBER))
# Linux's SIOCOUTQ (== TIOCOUTQ): bytes in a TCP socket's send queue not yet acknowledged.
_SIOCOUTQ = 0x5411 if sys.platform.startswith("linux") else None


def whole_number(raw: str, name: str) -> int:
    """``raw`` as a number of ASCII digits at most 2^63-1; otherwise 400 naming ``name``."""
    # str.isdigit() alone also accepts non-ASCII digits ("١", "１", "²"); int() accepts a sign,
    # spaces and "_" separators. Neither belongs in a seq.
    digits = raw.lstrip("0") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(digits) > _MAX_DIGITS or int(digits) > MAX_WHOLE_NUMBER:
        raise Problem(400, f"{name} must be ASCII digits, from 0 to {MAX_WHOLE_NUMBER}; got {raw!r}.")
    return int(digits)


class Slots:
    """A count of things open at once (streams), refused past a limit."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, limit: int, what: str) -> Callable[[], None]:
        """Take one slot or raise 503 + Retry-After; returns how to give it back (once)."""
        if self.used >= limit:
            raise Problem(
                503,
                f"This server has {limit} {what} open, its limit; try again shortly.",
                headers={"Retry-After": "5"},
            )
        self.used += 1
        taken = True

        def give_back() -> None:
            nonlocal taken
            if taken:
                taken = False
                self.used -= 1

        return give_back


class ByteBudget:
    """Bytes reserved by requests in progress (bodies being read), refused past a limit."""

    def __init__(self) -> None:
        self.reserved = 0

    def reserve(self, size: int, limit: int) -> None:
        """Reserve ``size`` bytes or raise 503 + Retry-After (the body is not read then)."""
        if self.reserved + size > limit:
            raise Problem(
                503,
                "Too many request bodies are being received at once; try again shortly.",
                headers={"Retry-After": "1"},
            )
        self.reserved += size

    def release(self, size: int) -> None:
        """Give back what :meth:`reserve` took."""
        self.reserved -= size


def ambiguous_framing(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request says both Content-Length and Transfer-Encoding (RFC 9112 §6.3: a
    request smuggling shape; h11 would follow Transfer-Encoding and keep the connection)."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


async def refuse_ambiguous_framing(send: Send) -> None:
    """400, and close the connection: nothing after this request on it can be trusted."""
    body = problem_document(400, "A request may not carry both Content-Length and Transfer-Encoding.")
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RefuseAmbiguousFraming:
    """The outermost ASGI layer: a request with both Content-Length and Transfer-Encoding is
    400 and its connection closed, before any other check can answer it on a connection that
    stays open (and would then run the request smuggled behind it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ambiguous_framing(scope["headers"]):
            await refuse_ambiguous_framing(send)
            return
        await self.app(scope, receive, send)


# One of each per web process.
open_streams = Slots()
bodies_in_flight = ByteBudget()


def transport_of(send: Any) -> asyncio.Transport | None:
    """The connection's transport behind a hypercorn ASGI ``send`` (HTTP/1.1), else None."""
    try:
        tcp_server = send.__self__.send.__self__.send.__self__
        transport = tcp_server.writer.transport
    except AttributeError:
        return None
    return transport if hasattr(transport, "get_write_buffer_size") else None


def may_block(transport: asyncio.Transport | None, size: int) -> bool:
    """Whether writing ``size`` more bytes may wait for the client (the writer drains once the
    transport's buffer passes its high-water mark). Only such writes need a timeout, which
    costs more than the write itself on the hot path."""
    if transport is None:
        return True
    return transport.get_write_buffer_size() + size > transport.get_write_buffer_limits()[1]


def reset(transport: asyncio.Transport) -> None:
    """Drop the connection at once, with what waits in its send queue (TCP RST). A plain close
    would leave that queue to the kernel, which keeps trying to deliver it to a client that
    does not read (an orphaned socket holding megabytes)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class SocketBacklog:
    """:func:`queued_bytes` of one stream's connection, as a callable that reads the kernel at
    most every ``interval_s``: streams ask before every batch they send, and an ioctl per
    delivery showed in the fan-out's CPU."""

    def __init__(self, transport: asyncio.Transport, interval_s: float = 0.25) -> None:
        self._transport = transport
        self._interval_s = interval_s
        self._next_read = 0.0
        self._last = 0

    def __call__(self) -> int:
        now = time.monotonic()
        if now >= self._next_read:
            self._next_read = now + self._interval_s
            # A closed connection's descriptor may already belong to another one.
            self._last = 0 if self._transport.is_closing() else queued_bytes(self._transport)
        return self._last


def queued_bytes(transport: asyncio.Transport) -> int:
    """Bytes waiting for the client: in the transport's buffer and in the kernel's send queue."""
    queued = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _SIOCOUTQ is not None and sock is not None:
        out = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), _SIOCOUTQ, out)
        except (OSError, ValueError):
            return queued
        queued += out[0]
    return queued
