"""Memory and latency of the web process under greedy clients (README, "Bounds under attack").

``python -m bench.hostile [--runs 3] [--messages 150]`` starts the Procfile's processes (private
Redis, release, worker, web) and, each run:

- inflate: a WebSocket offering permessage-deflate sends one ~500 KB frame that would inflate to
  500 MiB;
- reads: three clients read ``GET /messages`` in full (``--messages`` stored messages of ~1 MB)
  at once, while a fourth sends a small ``PUT`` every 50 ms;
- writes: 200 clients send a 1 MB ``PUT`` at once.

Growth is the web process's peak resident memory during the scenario (VmHWM, reset through
``/proc/<pid>/clear_refs`` before it) minus its resident memory just before (VmRSS). Each figure
is printed for every run, then as the median.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx

from bench.procs import System, stop_all, wait_until

MB = 1024 * 1024


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


class Peak:
    """Resident memory before a scenario and its peak during it (MB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        self.before_mb = memory_kb(pid, "VmRSS") / 1024

    def growth_mb(self) -> float:
        return memory_kb(self.pid, "VmHWM") / 1024 - self.before_mb


def store_large_messages(client: httpx.Client, count: int) -> None:
    padding = "x" * (MB - 100)
    for number in range(count):
        response = client.put("/messages", content=f'{{"n":{number},"pad":"{padding}"}}')
        assert response.status_code == 202, response.text
    wait_until(lambda: _count(client) >= count, 120, what="the large messages stored")


def _count(client: httpx.Client) -> int:
    last = client.get("/messages?tail=1").json()
    return int(last[0]["seq"]) if last else 0


def inflate(port: int, pid: int) -> dict[str, Any]:
    import socket

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\0" * (500 * MB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    mask = os.urandom(4)
    key = int.from_bytes((mask * (len(bomb) // 4 + 1))[: len(bomb)], "big")
    masked = (int.from_bytes(bomb, "big") ^ key).to_bytes(len(bomb), "big")
    frame = struct.pack("!BBQ", 0x80 | 0x40 | 1, 0x80 | 127, len(bomb)) + mask + masked
    handshake = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    ).encode()
    peak = Peak(pid)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(handshake)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        try:
            sock.sendall(frame)
            sock.settimeout(5)
            while sock.recv(65536):
                pass
        except OSError:
            pass
    time.sleep(0.5)
    return {
        "growth_mb": peak.growth_mb(),
        "compressed_kb": len(bomb) / 1024,
        "deflate_negotiated": b"permessage-deflate" in head.lower(),
    }


def reads(url: str, pid: int, readers: int = 3) -> dict[str, Any]:
    peak = Peak(pid)
    sizes: list[int] = []
    latencies: list[float] = []
    done = threading.Event()

    def read_all() -> None:
        with httpx.Client(base_url=url, timeout=120) as client, client.stream("GET", "/messages") as response:
            sizes.append(sum(len(chunk) for chunk in response.iter_raw()))

    def small_puts() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.put("/messages", content=b'{"small": true}')
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

    putter = threading.Thread(target=small_puts)
    putter.start()
    started = time.monotonic()
    threads = [threading.Thread(target=read_all) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    done.set()
    putter.join()
    latencies.sort()
    return {
        "growth_mb": peak.growth_mb(),
        "read_mb_each": statistics.mean(sizes) / MB,
        "seconds": seconds,
        "small_put_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "small_puts": len(latencies),
    }


def writes(port: int, pid: int, clients: int = 200) -> dict[str, Any]:
    body = b'{"pad":"' + b"y" * (MB - 20) + b'"}'
    head = f"PUT /messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    statuses: list[int] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 60)
            statuses.append(int(line.split()[1]) if line else 0)
            writer.close()
        except (OSError, TimeoutError, IndexError, ValueError):
            statuses.append(0)

    async def all_at_once() -> None:
        await asyncio.gather(*(one() for _ in range(clients)))

    peak = Peak(pid)
    started = time.monotonic()
    asyncio.run(all_at_once())
    return {
        "growth_mb": peak.growth_mb(),
        "seconds": time.monotonic() - started,
        "accepted": statuses.count(202),
        "refused_503": statuses.count(503),
        "other": len(statuses) - statuses.count(202) - statuses.count(503),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=150)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {"inflate": [], "reads": [], "writes": []}
    try:
        with System("procfile", name="hostile").start() as system:
            url = f"http://127.0.0.1:{system.port}"
            pid = system.pids["web"]
            with httpx.Client(base_url=url, timeout=60) as client:
                store_large_messages(client, args.messages)
            for run in range(args.runs):
                for name, scenario in (
                    ("inflate", lambda: inflate(system.port, pid)),
                    ("reads", lambda: reads(url, pid)),
                    ("writes", lambda: writes(system.port, pid)),
                ):
                    outcome = scenario()
                    results[name].append(outcome)
                    print(f"run {run + 1} {name}: {_show(outcome)}", flush=True)
                    time.sleep(1)
            web_log = system.log.read_text(errors="replace")
            print(f"tracebacks in the log: {web_log.count('Traceback')}")
    finally:
        stop_all()
    print(f"\nmedians of {args.runs} runs (web process; the machine may be shared):")
    for name, runs in results.items():
        medians = {
            key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "deflate_negotiated"
        }
        print(f"  {name}: {_show(medians)}")
    return 0


def _show(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in values.items()
    )


if __name__ == "__main__":
    raise SystemExit(main())
