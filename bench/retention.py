"""Retention figures (SPEC §10): purge throughput, and what a purge does to ingest latency.

    .venv/bin/python -m bench.retention [--rows 200000] [--rate 50] [--quiet-s 20]

One run, three phases, each ``python run.py`` (SQLite) on a copy of the same database holding
``--rows`` messages in channel ``default`` (filled straight into the file, like bench.channels):

1. quiet: no retention; ``--rate`` PUT/s to channel ``live`` for ``--quiet-s`` seconds.
2. purge: ``RETENTION_MAX_AGE=1h``, the backlog's ``received_at`` set so that it falls due a few
   seconds after the start, under the same load; runs until the backlog is gone. The purge's
   window is seen by polling ``GET /channels`` (every 50 ms); throughput = rows / window.
3. quiet again (the machine's drift between phases shows here).

Latency of each PUT: from sending it to its message arriving on a WebSocket following
``?channel=live`` (client clock: that is PUT -> stored -> announced), and the server's own
``persisted_at - received_at`` (PUT accepted -> written). p50/p99 of the messages sent inside the
purge window against the quiet phases.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from bench import scenarios
from bench.procs import System, temp_dir

RESULTS = Path(__file__).resolve().parent / "results"
DUE_AFTER_START_S = 6.0


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Load:
    """PUTs at a steady rate to channel ``live``; each one's arrival on a WebSocket timed."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.sent: dict[int, float] = {}
        self.arrived: dict[int, tuple[float, float]] = {}  # n -> (client latency s, server s)
        self.stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._follow, daemon=True),
        ]
        self._ready = threading.Event()

    def start(self) -> None:
        self._threads[1].start()
        assert self._ready.wait(10)
        self._threads[0].start()

    def stop(self) -> None:
        time.sleep(2.0)  # the last ones arrive
        self.stopping.set()
        for thread in self._threads:
            thread.join(10)

    def _send(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        number, interval_s = 0, 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stopping.is_set():
            body = json.dumps({"n": number}).encode()
            self.sent[number] = time.time()
            connection.request("PUT", "/channels/live/messages", body=body)
            response = connection.getresponse()
            response.read()
            number += 1
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
        connection.close()

    def _follow(self) -> None:
        with connect(f"ws://127.0.0.1:{self.port}/ws?channel=live", open_timeout=10, max_queue=None) as ws:
            self._ready.set()
            while not self.stopping.is_set():
                try:
                    event = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    continue
                if event["event"] != "message":
                    continue
                now, message = time.time(), event["data"]
                number = message["payload"]["n"]
                server_s = _seconds(message["persisted_at"]) - _seconds(message["received_at"])
                self.arrived[number] = (now - self.sent[number], server_s)

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        chosen = [n for n, at in self.sent.items() if since <= at <= until]
        client = [self.arrived[n][0] * 1000 for n in chosen if n in self.arrived]
        server = [self.arrived[n][1] * 1000 for n in chosen if n in self.arrived]
        return {
            "sent": len(chosen),
            "arrived": len(client),
            "put_to_ws_ms": {
                "p50": _percentile(client, 0.5),
                "p99": _percentile(client, 0.99),
                "max": max(client, default=None),
            },
            "received_to_persisted_ms": {"p50": _percentile(server, 0.5), "p99": _percentile(server, 0.99)},
        }


def _count(port: int, name: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/channels")
        rows = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return next((row["count"] for row in rows if row["name"] == name), 0)


def _quiet(template: Path, rate: float, seconds: float) -> dict[str, Any]:
    data_dir = temp_dir("retention-quiet")
    shutil.copy2(template / "pipeline.db", data_dir / "pipeline.db")
    system = System("run.py", data_dir, name="retention-quiet")
    system.owns_dir = True
    with system.start():
        load = Load(system.port, rate)
        load.start()
        time.sleep(seconds)
        load.stop()
        return load.summary()


def _purging(template: Path, rows: int, rate: float) -> dict[str, Any]:
    data_dir = temp_dir("retention-purge")
    shutil.copy2(template / "pipeline.db", data_dir / "pipeline.db")
    db = sqlite3.connect(data_dir / "pipeline.db")
    with db:  # due DUE_AFTER_START_S after now (the start takes a few seconds of that)
        db.execute("UPDATE message SET received_at = ?", (_stamp(time.time() - 3600 + DUE_AFTER_START_S),))
    db.close()
    env = {"RETENTION_MAX_AGE": "1h", "RETENTION_INTERVAL_S": "0.5"}
    system = System("run.py", data_dir, name="retention-purge", env=env)
    system.owns_dir = True
    with system.start():
        load = Load(system.port, rate)
        load.start()
        polls: list[tuple[float, int | None]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            count = _count(system.port, "default")
            polls.append((time.time(), count))
            if count == 0:
                break
            time.sleep(0.05)
        time.sleep(3.0)
        load.stop()
    started = next(at for at, count in polls if count is not None and count < rows)
    before = max(at for at, count in polls if count == rows)
    ended = next(at for at, count in polls if count == 0)
    window_s = ended - before
    return {
        "rows": rows,
        "purge_window_s": round(window_s, 3),
        "first_seen_deleting_s_after_poll_start": round(started - polls[0][0], 3),
        "rows_per_s": round(rows / window_s),
        "during_purge": load.summary(before, ended),
        "whole_phase": load.summary(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--quiet-s", type=float, default=20.0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    template = scenarios.make_filled_database(args.rows)
    try:
        result = {
            "when": _stamp(time.time()),
            "loadavg_before": load_before,
            "quiet": _quiet(template, args.rate, args.quiet_s),
            "purge": _purging(template, args.rows, args.rate),
            "quiet_again": _quiet(template, args.rate, args.quiet_s),
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
    finally:
        shutil.rmtree(template, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"retention-{int(time.time())}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {out}")
    for phase in ("quiet", "quiet_again"):
        print(
            phase,
            "p50/p99 PUT->WS ms:",
            result[phase]["put_to_ws_ms"]["p50"],
            result[phase]["put_to_ws_ms"]["p99"],
        )
    during = result["purge"]["during_purge"]
    print("during purge p50/p99 PUT->WS ms:", during["put_to_ws_ms"]["p50"], during["put_to_ws_ms"]["p99"])
    print(
        "purge rows/s:",
        result["purge"]["rows_per_s"],
        "load average before/after:",
        load_before,
        result["loadavg_after"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
