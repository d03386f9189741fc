"""One fan-out client process: N WebSocket connections to /ws that check what they receive.

    python -m bench.fanout_client --port P --clients N --out FILE [--deflate] [--channels C]

Talks to the benchmark over stdin/stdout, one line each way:
  -> "READY <connected> <failed>"         once every connection is open
  <- {"expect": [n, ...], "timeout_s": T}  the measured messages that were accepted (202)
  -> "DONE"                               every connection has all of them, or T passed; FILE written
  <- "CLOSE"                              close the connections and exit

Each measured payload is {"fanout": "m", "n": <0..K-1>, "ts": <time.time_ns() just before
its PUT was written>}; a connection records (n, receipt time) and checks that ``seq`` strictly
increases on it. FILE gets per-process totals and every delivery latency in microseconds.

With ``--channels C``, connection j follows ``/ws?channel=ch<j % C>``; measured payloads then
carry their channel ("c") and "expect" maps each channel to its accepted numbers. A message of
another channel arriving on a connection counts as "unexpected".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
import uvloop

from bench.clients import WsReader, open_ws
from bench.procs import raise_nofile_limit


class Conn:
    __slots__ = ("last_seq", "ns", "order_violations", "pings", "frames", "reader", "channel", "foreign")

    def __init__(self, channel: str | None = None) -> None:
        self.channel = channel
        self.foreign = 0
        self.last_seq = 0
        self.ns: list[int] = []
        self.order_violations = 0
        self.pings = 0
        self.frames = 0
        self.reader: WsReader | None = None


async def main(args: argparse.Namespace) -> None:
    latencies: list[int] = []
    conns = [Conn(f"ch{j % args.channels}" if args.channels else None) for j in range(args.clients)]

    def handler(conn: Conn):  # type: ignore[no-untyped-def]
        def on_text(data: bytes, now_ns: int) -> None:
            conn.frames += 1
            doc = orjson.loads(data)
            if doc.get("event") != "message":
                conn.pings += 1
                return
            message = doc["data"]
            seq = message["seq"]
            if seq <= conn.last_seq:
                conn.order_violations += 1
            conn.last_seq = seq
            payload = message["payload"]
            if isinstance(payload, dict) and payload.get("fanout") == "m":
                if conn.channel is not None and payload.get("c") != conn.channel:
                    conn.foreign += 1
                    return
                conn.ns.append(payload["n"])
                latencies.append((now_ns - payload["ts"]) // 1000)

        return on_text

    semaphore = asyncio.Semaphore(25)
    failed = 0

    async def connect(conn: Conn) -> None:
        nonlocal failed
        async with semaphore:
            for _attempt in range(3):
                try:
                    path = "/ws" if conn.channel is None else f"/ws?channel={conn.channel}"
                    conn.reader = await open_ws(
                        "127.0.0.1", args.port, path, handler(conn), deflate=args.deflate, timeout_s=20
                    )
                    return
                except (OSError, RuntimeError, TimeoutError):
                    await asyncio.sleep(0.2)
            failed += 1

    await asyncio.gather(*(connect(conn) for conn in conns))
    connected = sum(1 for conn in conns if conn.reader is not None)
    loop = asyncio.get_running_loop()
    print(f"READY {connected} {failed}", flush=True)

    line = await loop.run_in_executor(None, sys.stdin.readline)
    command = orjson.loads(line)
    expect_of = command["expect"]

    def expected_of(conn: Conn) -> set[int]:
        return set(expect_of if conn.channel is None else expect_of.get(conn.channel, []))

    expected_by_conn = [expected_of(conn) for conn in conns]
    timeout_s = float(command["timeout_s"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(len(c.ns) >= len(e) or c.reader is None for c, e in zip(conns, expected_by_conn, strict=True)):
            break
        await asyncio.sleep(0.05)
    # A little longer, so a duplicate arriving right after the last message is seen too.
    await asyncio.sleep(0.2)

    complete = missing = duplicates = closed = 0
    close_codes: dict[str, int] = {}
    for conn, expected in zip(conns, expected_by_conn, strict=True):
        expect = len(expected)
        got = set(conn.ns)
        duplicates += len(conn.ns) - len(got)
        # (a refused PUT's message can never arrive: it was not stored)
        missing += len(expected - got)
        if got == expected and len(conn.ns) == expect and conn.order_violations == 0:
            complete += 1
        if conn.reader is not None and conn.reader.closed.done():
            closed += 1
            code = str(conn.reader.close_code)
            close_codes[code] = close_codes.get(code, 0) + 1
    result = {
        "clients": args.clients,
        "connected": connected,
        "deflate_negotiated": sum(1 for c in conns if c.reader is not None and c.reader.deflate),
        "complete": complete,
        "missing": missing,
        "unexpected": sum(
            len(set(c.ns) - e) + c.foreign for c, e in zip(conns, expected_by_conn, strict=True)
        ),
        "expected_deliveries": sum(len(e) for e in expected_by_conn),
        "duplicates": duplicates,
        "order_violations": sum(conn.order_violations for conn in conns),
        "closed": closed,
        "close_codes": close_codes,
        "frames": sum(conn.frames for conn in conns),
        "pings": sum(conn.pings for conn in conns),
        "latencies_us": latencies,
    }
    with open(args.out, "wb") as handle:
        handle.write(orjson.dumps(result))
    print("DONE", flush=True)

    await loop.run_in_executor(None, sys.stdin.readline)
    for conn in conns:
        if conn.reader is not None:
            conn.reader.close()
    await asyncio.sleep(0.1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    parser.add_argument("--channels", type=int, default=0, help="spread connections over this many channels")
    raise_nofile_limit()
    uvloop.run(main(parser.parse_args()))
