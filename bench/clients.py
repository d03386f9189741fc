"""Lean asyncio clients for the benchmark: HTTP/1.1 keep-alive PUTs and a WebSocket reader.

They are small on purpose, so that on a 2-core machine the client side costs as little CPU
as possible and the timestamps are taken right at the socket:

- :class:`HttpConnection` writes ``PUT /messages`` on one keep-alive connection and reads the
  response (status line, headers, ``Content-Length`` body).
- :class:`WsReader` is a WebSocket client (RFC 6455) as an asyncio Protocol. It can offer
  ``permessage-deflate`` as browsers do (Chromium and Firefox always offer it, and hypercorn
  accepts it) or not, and calls ``on_text(frame_bytes, receipt_ns)`` for every text message.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import zlib
from collections.abc import Callable


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.last_used = time.monotonic()

    def stale(self, max_idle_s: float) -> bool:
        """True if the server may have closed it (hypercorn closes keep-alive idle 5 s)."""
        return self._reader is None or self._reader.at_eof() or time.monotonic() - self.last_used > max_idle_s

    async def open(self) -> HttpConnection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    def send_put(self, body: bytes, path: str = "/messages") -> None:
        """Write one PUT (the caller timestamps just before this call)."""
        assert self._writer is not None
        self._writer.write(
            b"PUT %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), self.port, len(body), body)
        )

    async def read_response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self._reader.readexactly(length) if length else b""
        self.last_used = time.monotonic()
        if close:
            await self.close()
            await self.open()
        return status, body

    async def put(self, body: bytes) -> tuple[int, bytes]:
        self.send_put(body)
        return await self.read_response()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None


class WsReader(asyncio.Protocol):
    """One WebSocket connection that reads server frames (and answers pings and closes)."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        on_text: Callable[[bytes, int], None],
        *,
        deflate: bool,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.on_text = on_text
        self.offer_deflate = deflate
        self.deflate = False
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._buffer = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []
        self._fragment_compressed = False
        self._inflater: zlib._Decompress | None = None  # type: ignore[name-defined]
        self._no_context_takeover = False

    # asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        extensions = (
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            if self.offer_deflate
            else ""
        )
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{extensions}\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self._buffer
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            status = head.split(" ", 2)[1] if " " in head else "?"
            if status != "101":
                self._fail(RuntimeError(f"WebSocket handshake refused: {head.splitlines()[0]}"))
                return
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                    self.deflate = True
                    self._no_context_takeover = "server_no_context_takeover" in value
                    self._inflater = zlib.decompressobj(-15)
            self._upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        self._parse(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # Frames ------------------------------------------------------------------------
    def _parse(self, now: int) -> None:
        buf = self._buffer
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            if b1 & 0x80:
                self._fail(RuntimeError("the server masked a frame"))
                return
            if size - pos < header + length:
                break
            payload = bytes(buf[pos + header : pos + header + length])
            pos += header + length
            self._frame(b0 & 0x80, b0 & 0x40, b0 & 0x0F, payload, now)
        if pos:
            del buf[:pos]

    def _frame(self, fin: int, rsv1: int, opcode: int, payload: bytes, now: int) -> None:
        if opcode in (0x1, 0x2):
            self._fragments = [payload]
            self._fragment_compressed = bool(rsv1)
        elif opcode == 0x0:
            self._fragments.append(payload)
        elif opcode == 0x8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._send(0x8, payload[:2])
            if self.transport is not None:
                self.transport.close()
            return
        elif opcode == 0x9:
            self._send(0xA, payload)
            return
        else:
            return
        if not fin:
            return
        data = b"".join(self._fragments) if len(self._fragments) > 1 else self._fragments[0]
        self._fragments = []
        if self._fragment_compressed:
            assert self._inflater is not None
            data = self._inflater.decompress(data + b"\x00\x00\xff\xff")
            if self._no_context_takeover:
                self._inflater = zlib.decompressobj(-15)
        self.on_text(data, now)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self._send(0x8, (1000).to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.close()


async def open_ws(
    host: str,
    port: int,
    path: str,
    on_text: Callable[[bytes, int], None],
    *,
    deflate: bool,
    timeout_s: float = 10.0,
) -> WsReader:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: WsReader(host, port, path, on_text, deflate=deflate), host, port
    )
    await asyncio.wait_for(asyncio.shield(protocol.opened), timeout_s)
    return protocol


class HttpPool:
    """Keep-alive connections for open-loop sending: a request never waits for an earlier one.

    ``put`` takes an idle connection (or opens one, up to ``limit``), so messages go out on
    their schedule even when the server answers slowly.
    """

    def __init__(self, host: str, port: int, limit: int = 32) -> None:
        self.host, self.port = host, port
        self._idle: list[HttpConnection] = []
        self._all: list[HttpConnection] = []
        self._slots = asyncio.Semaphore(limit)

    async def warm(self, count: int) -> None:
        for _ in range(count):
            connection = await HttpConnection(self.host, self.port).open()
            self._all.append(connection)
            self._idle.append(connection)

    async def put(
        self,
        make_body: Callable[[], bytes],
        on_sent: Callable[[], None] | None = None,
        path: str = "/messages",
    ) -> tuple[int, bytes]:
        """PUT the body ``make_body()`` builds right before writing (so timestamps inside are fresh)."""
        async with self._slots:
            # Never write on a connection the server may be closing: that request would be lost.
            while self._idle and self._idle[-1].stale(max_idle_s=2.0):
                old = self._idle.pop()
                self._all.remove(old)
                await old.close()
            if self._idle:
                connection = self._idle.pop()
            else:
                connection = await HttpConnection(self.host, self.port).open()
                self._all.append(connection)
            try:
                body = make_body()
                connection.send_put(body, path)
                if on_sent is not None:
                    on_sent()
                return await connection.read_response()
            finally:
                self._idle.append(connection)

    @property
    def size(self) -> int:
        return len(self._all)

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()
