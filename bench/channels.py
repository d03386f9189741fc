"""Channel figures (SPEC §9): GET /channels with many stored messages, and the fan-out with
clients spread over channels against all of them on one, in the same run.

    .venv/bin/python -m bench.channels [--rows 1000000] [--channels 20] [--samples 21]
                                       [--fanout-runs 1] [--skip-get] [--skip-fanout]

The GET part fills a SQLite file directly (one transaction, ``scenarios.make_filled_database``)
and starts ``python run.py`` on it, then times each request from a kept-alive connection. The
fan-out part runs ``scenarios.fanout`` with the variants "channels-1" (1,000 clients on one
channel) and "channels-10" (100 on each of 10), each channel sent 20 msg/s, so every client
receives 20 msg/s in both: what differs is how many messages each stream's filter skips.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.procs import System

RESULTS = Path(__file__).resolve().parent / "results"


def _timed_gets(port: int, path: str, samples: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times_ms: list[float] = []
    body = b""
    status = 0
    try:
        for _ in range(samples + 1):  # the first request warms the connection and caches
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            times_ms.append((time.perf_counter() - started) * 1000)
            status = response.status
    finally:
        connection.close()
    times_ms = times_ms[1:]
    return {
        "path": path,
        "status": status,
        "bytes": len(body),
        "median_ms": statistics.median(times_ms),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
        "samples": samples,
        "body_head": body[:300].decode(errors="replace"),
    }


def get_channels(rows: int, channels: int, samples: int) -> dict[str, Any]:
    """Time GET /channels (and some channel reads) with ``rows`` messages in ``channels``."""
    started = time.monotonic()
    template = scenarios.make_filled_database(rows, channels=channels)
    fill_s = time.monotonic() - started
    system = System("run.py", template, name="channels")
    system.owns_dir = True
    system.start(timeout_s=120)
    try:
        time.sleep(1.0)
        mid = rows // 2
        paths = [
            "/channels",
            "/channels/ch7/messages?tail=100",
            f"/channels/ch7/messages?before={mid}&limit=100",
            f"/messages?channel=ch3&channel=ch4&after={mid}&limit=1000",
            "/messages?tail=100",
        ]
        timings = [_timed_gets(system.port, path, samples) for path in paths]
    finally:
        system.stop()
    return {"rows": rows, "channels": channels, "fill_s": fill_s, "timings": timings}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.channels", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--samples", type=int, default=21)
    parser.add_argument("--fanout-runs", type=int, default=1)
    parser.add_argument("--skip-get", action="store_true")
    parser.add_argument("--skip-fanout", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not args.skip_get:
        results["get"] = got = get_channels(args.rows, args.channels, args.samples)
        print(f"filled {got['rows']:,} rows in {got['channels']} channels in {got['fill_s']:.0f} s")
        for timing in got["timings"]:
            print(
                f"GET {timing['path']}: median {timing['median_ms']:.2f} ms "
                f"(min {timing['min_ms']:.2f}, max {timing['max_ms']:.2f}; {timing['samples']} samples, "
                f"{timing['bytes']:,} bytes, status {timing['status']})"
            )
    if not args.skip_fanout:
        cfg = scenarios.Config()
        runs: dict[str, list[dict[str, Any]]] = {"channels-1": [], "channels-10": []}
        for _ in range(args.fanout_runs):
            for variant in runs:  # interleaved, so both see the same machine
                result = scenarios.fanout(cfg, variant)
                result.pop("latencies_us", None)
                runs[variant].append(result)
                print(
                    f"fan-out {variant}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                    f"max {result['max_ms']:.0f} ms; deliveries {result['deliveries']}/"
                    f"{result['deliveries_expected']}; complete clients {result['complete_clients']}; "
                    f"missing {result['missing']}, duplicates {result['duplicates']}, out of order "
                    f"{result['order_violations']}, unexpected {result['unexpected']}; PUTs refused "
                    f"{result['puts_refused']}; web CPU {result['cpu_percent'].get('web', 0):.0f}% "
                    f"({result['web_cpu_us_per_delivery']:.1f} us/delivery); ok {result['ok']}"
                )
        results["fanout"] = runs
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"channels-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
