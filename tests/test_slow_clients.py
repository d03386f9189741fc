"""A client that stops reading is cut off (SPEC §4), without holding up anyone else."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support import Pipeline, send, wait_until, websocket_frames

pytestmark = pytest.mark.slow

MESSAGES = 300
PAYLOAD_BYTES = 20_000
SEQ = re.compile(r'\{"event":"message","data":\{"id":"[0-9a-f-]{36}","seq":(\d+),')


@pytest.fixture
def service(pipeline: Pipeline) -> Iterator[tuple[Pipeline, httpx.Client]]:
    """One web and one worker, with MAX_BODY_BYTES at 200 KB: a stream's bound holds two full
    bulk batches (SPEC §12), so with the default 1 MiB bodies it is ~2.5 MiB; at 200 KB it is
    the 1 MiB these cases are measured against (100 KB messages still fit in one body)."""
    url = pipeline.start_web(MAX_BODY_BYTES="200000")
    pipeline.start_worker()
    pipeline.wait_healthy(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        yield pipeline, client


class Readers(threading.Thread):
    """``count`` well-behaved WebSocket clients on one event loop, recording arrival times.

    Like the page, a reader that is closed (a 1013 if it ever fell behind) resumes from its
    last seq; ``resumed`` counts how often that happened.
    """

    def __init__(self, url: str, count: int) -> None:
        super().__init__(daemon=True)
        self.url = url.replace("http://", "ws://") + "/ws"
        self.count = count
        self.arrivals: list[dict[int, float]] = [{} for _ in range(count)]
        self.order_ok = [True] * count
        self.resumed = 0
        self.ready = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        sockets = [await async_connect(self.url, max_size=None) for _ in range(self.count)]
        self.ready.set()
        await asyncio.gather(*(self._read(i, ws) for i, ws in enumerate(sockets)))
        for ws in sockets:
            await ws.close()

    async def _read(self, index: int, ws: Any) -> None:
        last = 0
        while not self._halt.is_set():
            try:
                frame = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.resumed += 1
                ws = await async_connect(f"{self.url}?after={last}", max_size=None)
                continue
            # Only the head of a frame is needed (and parsing 50 KB a frame would make these
            # clients the slow ones): '{"event":"message","data":{"id":"<uuid>","seq":N,...'
            found = SEQ.match(frame)
            if found:
                seq = int(found.group(1))
                self.order_ok[index] &= seq > last
                last = seq
                self.arrivals[index][seq] = time.time()

    def stop(self) -> None:
        self._halt.set()
        self.join(20)


def raw_client(port: int, request: bytes) -> socket.socket:
    """A connection with a tiny receive buffer that sends ``request`` and then stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def read_all(sock: socket.socket, timeout_s: float = 20) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        except ConnectionResetError:
            break  # cut off: it did not read for longer than the server's grace
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_stalled_websocket_is_closed_1013_and_resumes_while_100_others_keep_up(
    service: tuple[Pipeline, httpx.Client],
) -> None:
    pipeline, client = service
    url = str(client.base_url).rstrip("/")
    port = int(url.rsplit(":", 1)[1])
    web_pid = pipeline.webs[0][0].pid
    readers = Readers(url, 100)
    readers.start()
    assert readers.ready.wait(20)
    key = base64.b64encode(os.urandom(16)).decode()
    stalled = raw_client(
        port,
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    time.sleep(0.5)
    rss_before = rss_mb(web_pid)
    sent_at: dict[str, float] = {}
    padding = "x" * PAYLOAD_BYTES
    for n in range(MESSAGES):
        sent_at[send(client, {"n": n, "pad": padding}).json()["id"]] = time.time()
        time.sleep(0.01)
    rows = wait_until(lambda: len(r := client.get("/messages").json()) == MESSAGES and r, timeout_s=30)
    seqs = [row["seq"] for row in rows]
    wait_until(lambda: all(len(a) == MESSAGES for a in readers.arrivals), timeout_s=30)
    rss_after = rss_mb(web_pid)
    readers.stop()

    # Everyone else got everything, in order, promptly.
    assert all(readers.order_ok)
    sent_by_seq = {row["seq"]: sent_at[row["id"]] for row in rows}
    delays = sorted(a[seq] - sent_by_seq[seq] for a in readers.arrivals for seq in seqs)
    p99 = delays[int(len(delays) * 0.99)]
    assert p99 < 2.0, f"p99 delivery {p99:.2f}s"

    # The stalled client: what it finally reads ends with a 1013 close.
    data = read_all(stalled)
    frames = websocket_frames(data[data.index(b"\r\n\r\n") + 4 :])
    stalled.close()
    messages = [json.loads(payload)["data"] for opcode, payload in frames if opcode == 1]
    messages = [m for m in messages if "seq" in m]
    closes = [payload for opcode, payload in frames if opcode == 8]
    # Closed with 1013, unless it read nothing for so long that it was cut off without one.
    assert all(struct.unpack(">H", close[:2])[0] == 1013 for close in closes)
    got = [m["seq"] for m in messages]
    assert got == seqs[: len(got)] and len(got) < MESSAGES
    # ... and it resumes from its last seq with no gap and no duplicate.
    after = got[-1] if got else 0
    with connect(url.replace("http://", "ws://") + f"/ws?after={after}", max_size=None) as ws:
        rest = []
        while len(rest) < MESSAGES - len(got):
            frame = json.loads(ws.recv(timeout=10))
            if frame["event"] == "message":
                rest.append(frame["data"]["seq"])
    assert got + rest == seqs
    print(
        f"\n[slow ws] stalled client got {len(got)}/{MESSAGES} then 1013; readers p99 {p99 * 1000:.0f} ms, "
        f"readers resumed {readers.resumed} times; "
        f"web RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    assert rss_after - rss_before < 100


def test_a_stalled_sse_stream_ends_and_resumes(service: tuple[Pipeline, httpx.Client]) -> None:
    _, client = service
    url = str(client.base_url).rstrip("/")
    port = int(url.rsplit(":", 1)[1])
    stalled = raw_client(port, f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    time.sleep(0.3)
    padding = "x" * PAYLOAD_BYTES
    for n in range(MESSAGES):
        send(client, {"n": n, "pad": padding})
        time.sleep(0.003)
    rows = wait_until(lambda: len(r := client.get("/messages").json()) == MESSAGES and r, timeout_s=30)
    seqs = [row["seq"] for row in rows]
    data = read_all(stalled)
    stalled.close()
    assert data.endswith(b"0\r\n\r\n"), "the stream should have ended"
    ids = [int(line[4:]) for line in data.split(b"\n") if line.startswith(b"id: ")]
    assert ids == seqs[: len(ids)] and len(ids) < MESSAGES
    resumed = client.stream("GET", "/events", headers={"Last-Event-ID": str(ids[-1] if ids else 0)})
    with resumed as response:
        rest: list[int] = []
        for line in response.iter_lines():
            if line.startswith("id: "):
                rest.append(int(line[4:]))
            if len(rest) == MESSAGES - len(ids):
                break
    assert ids + rest == seqs


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a socket (struct tcp_info's first byte; 1 = ESTABLISHED)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def subscribers(client: httpx.Client) -> int:
    count: int = client.get("/healthz").json()["live"]["subscribers"]
    return count


@pytest.mark.parametrize(
    ("transport", "count"),
    [
        pytest.param("ws", 120, id="ws-12MB"),
        pytest.param("sse", 120, id="sse-12MB"),
        # ~1.5 MB: about 1 MB of it sits in the kernel's send queue, the rest stays under the
        # process's own 1 MiB bound; only counting the socket's backlog notices this client.
        pytest.param("ws", 15, id="ws-1500KB"),
        pytest.param("sse", 15, id="sse-1500KB"),
    ],
)
def test_a_client_that_never_reads_is_closed_within_30_s_while_others_keep_up(
    service: tuple[Pipeline, httpx.Client], transport: str, count: int
) -> None:
    """Messages of 100 KB sent to a client that never reads: most of them could sit in the
    kernel's socket buffers (beyond the process's own bounded buffer); they still count, and
    the connection is closed within 30 s while well-behaved readers get everything promptly."""
    pipeline, client = service
    url = str(client.base_url).rstrip("/")
    port = int(url.rsplit(":", 1)[1])
    web_pid = pipeline.webs[0][0].pid
    readers = Readers(url, 20)
    readers.start()
    assert readers.ready.wait(20)
    key = base64.b64encode(os.urandom(16)).decode()
    if transport == "ws":
        head = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    else:
        head = f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    never_reads = raw_client(port, head.encode())
    try:
        wait_until(lambda: subscribers(client) == 21, timeout_s=10)
        rss_before = rss_mb(web_pid)
        started = time.monotonic()
        padding = "x" * 100_000
        for n in range(count):
            send(client, {"n": n, "pad": padding})
            time.sleep(0.01)

        def left_s() -> float:
            return max(1.0, 30 - (time.monotonic() - started))

        wait_until(lambda: subscribers(client) == 20, timeout_s=left_s())
        wait_until(lambda: tcp_state(never_reads) != 1, timeout_s=left_s())  # 1: ESTABLISHED
        closed_after_s = time.monotonic() - started
        rows = wait_until(lambda: len(r := client.get("/messages").json()) == count and r, timeout_s=30)
        seqs = [row["seq"] for row in rows]
        wait_until(lambda: all(len(a) == count for a in readers.arrivals), timeout_s=30)
        rss_after = rss_mb(web_pid)
    finally:
        readers.stop()
        never_reads.close()
    assert all(readers.order_ok)
    assert all(sorted(a) == seqs for a in readers.arrivals)
    print(
        f"\n[never reads, {transport}] closed after {closed_after_s:.1f} s; "
        f"web RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    assert closed_after_s < 30
    assert rss_after - rss_before < 100
