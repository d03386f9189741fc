"""The benchmark's scenarios. Each starts what it measures, drives it, stops it, and returns a dict.

Every scenario starts the system fresh (a new temporary DATA_DIR), the way users start it, and
drives it from processes other than the system's own, over loopback only.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import shutil
import socket
import sqlite3
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import procs
from bench.clients import HttpPool
from bench.procs import PYTHON, CpuMeter, System, spawn, stop, temp_dir
from pipeline.local_redis import LocalRedis
from pipeline.schema import FILL_CHANNEL_STATS

HERE = Path(__file__).resolve().parent
LUA = HERE / "ingest.lua"


@dataclass
class Config:
    runs: int = 3
    wrk_duration_s: int = 10
    wrk_connections: int = 64
    wrk_threads: int = 2
    drain_timeout_s: float = 60.0
    latency_rate: float = 50.0
    latency_duration_s: float = 10.0
    fanout_clients: int = 1000
    fanout_processes: int = 4
    fanout_rate: float = 20.0
    fanout_duration_s: float = 10.0
    fanout_variants: tuple[str, ...] = ("deflate", "plain")
    get_rows: int = 100_000
    idle_s: float = 10.0
    settle_s: float = 3.0
    work_dir: Path = field(default_factory=lambda: Path("/tmp"))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on sorted data."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n)
    return float(ordered[min(rank, len(ordered)) - 1])


def _warm_up(port: int, count: int, tag: str) -> None:
    for i in range(count):
        status = procs.http_put(port, orjson.dumps({"warmup": tag, "n": i}))
        if status != 202:
            raise RuntimeError(f"warm-up PUT answered {status}")


def _stored_count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM message").fetchone()[0])


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)


# 1. Ingest ------------------------------------------------------------------------------
def run_wrk(port: int, cfg: Config, tag: str, out_dir: Path) -> dict[str, Any]:
    out = out_dir / f"wrk-{tag}.json"
    env = {**os.environ, "BENCH_RUN": tag, "BENCH_OUT": str(out)}
    args = [
        "wrk", "-t", str(cfg.wrk_threads), "-c", str(cfg.wrk_connections), "-d", f"{cfg.wrk_duration_s}s",
        "--timeout", "5s", "-s", str(LUA), f"http://127.0.0.1:{port}/messages",
    ]  # fmt: skip
    process = spawn(args, env=env, log=out_dir / f"wrk-{tag}.log")
    try:
        process.wait(cfg.wrk_duration_s + 60)
    finally:
        stop(process)
    if not out.exists():
        raise RuntimeError(f"wrk wrote no summary; see {out_dir / f'wrk-{tag}.log'}")
    result: dict[str, Any] = json.loads(out.read_text())
    statuses = {int(k): v for k, v in result["statuses"].items()}
    result["statuses"] = statuses
    result["accepted"] = statuses.get(202, 0)
    result["non_2xx"] = sum(v for k, v in statuses.items() if not 200 <= k < 300)
    result["duration_s"] = result["duration_us"] / 1e6
    return result


def ingest_ceiling(kind: str, cfg: Config) -> dict[str, Any]:
    """wrk against a bare Quart route, or one that only does ``enqueue_job`` (see ceiling.py)."""
    directory = temp_dir(f"ceiling-{kind}")
    redis = None
    process = None
    try:
        port = procs.free_port()
        args = [PYTHON, "-m", "bench.ceiling", kind, "--port", str(port)]
        pids: dict[str, int] = {}
        if kind == "enqueue":
            redis = LocalRedis(directory)
            redis.start()
            assert redis.process is not None
            args += ["--redis-url", redis.url]
            pids["redis"] = redis.process.pid
        process = spawn(args, log=directory / "ceiling.log")
        pids["web"] = process.pid
        procs.wait_until(lambda: process.poll() is not None or procs._port_open(port), 20, what="ceiling app")
        if process.poll() is not None:
            raise RuntimeError((directory / "ceiling.log").read_text())
        _warm_up(port, 50, "ceiling")
        before = procs.redis_command_stats(redis.url[len("unix://") :]) if redis is not None else {}
        meter = CpuMeter(pids).start()
        result = run_wrk(port, cfg, f"ceiling-{kind}", directory)
        meter.stop()
        accepted = result["accepted"]
        after = procs.redis_command_stats(redis.url[len("unix://") :]) if redis is not None else {}
        return {
            "accepted": accepted,
            "accepted_per_s": accepted / result["duration_s"],
            "non_2xx": result["non_2xx"],
            "errors": result["errors"],
            "wrk_latency_ms": {k: v / 1000 for k, v in result["latency_us"].items()},
            "cpu_percent": meter.percent(),
            "machine": meter.noise(),
            "redis_commands_per_message": _per_message(before, after, accepted),
            "web_cpu_us_per_request": 1e6 * meter.seconds["web"] / max(1, accepted),
        }
    finally:
        if process is not None:
            stop(process)
        if redis is not None:
            redis.stop()
        procs.remove_temp_dir(directory)


Hook = Callable[[dict[str, int]], Callable[[], None]]


def ingest_pipeline(
    mode: str, cfg: Config, hook: Hook | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """wrk PUTs for cfg.wrk_duration_s, then wait until every accepted message is stored.

    ``hook(pids)`` (the profiler) is called as the load starts; what it returns, as it ends.
    ``env``: extra settings for the system (``METRICS=0`` measures what metrics cost).
    """
    system = System(mode, name="ingest", env=env).start()
    try:
        _warm_up(system.port, 50, "ingest")
        db = _open_ro(system.db_path)
        procs.wait_until(lambda: _stored_count(db) >= 50, 20, what="warm-up stored")
        base_seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM message").fetchone()[0])
        tag = f"ingest-{uuid.uuid4().hex[:8]}"
        pids = {name: system.pids[name] for name in ("web", "worker", "redis")}
        commands_before = procs.redis_command_stats(system.redis_address)
        meter = CpuMeter(pids).start()
        t0 = time.monotonic()
        finish = _start_hook(hook, system.pids)
        result = run_wrk(system.port, cfg, tag, system.data_dir)
        t_wrk = time.monotonic()
        finish()
        accepted_ids = set(result["ids"])
        accepted = len(accepted_ids)

        # Wait until every id wrk saw answered 202 is stored (polling the SQLite file, read-only).
        t_done = None
        deadline = t_wrk + cfg.drain_timeout_s
        while time.monotonic() < deadline:
            count = int(db.execute("SELECT COUNT(*) FROM message WHERE seq > ?", (base_seq,)).fetchone()[0])
            if count >= accepted:
                now = time.monotonic()
                stored_ids = {
                    row[0] for row in db.execute("SELECT id FROM message WHERE seq > ?", (base_seq,))
                }
                if accepted_ids <= stored_ids:
                    t_done = now
                    break
                time.sleep(0.05)
            else:
                time.sleep(0.02)
        meter.stop()
        commands_after = procs.redis_command_stats(system.redis_address)
        # Requests wrk had in flight when it stopped may still land: give them a moment.
        time.sleep(1.0)
        rows = db.execute(
            "SELECT id, seq, payload FROM message WHERE seq > ? ORDER BY seq", (base_seq,)
        ).fetchall()
        db.close()
    except BaseException:
        system.keep_log()
        raise
    finally:
        system.stop()

    stored_ids = [row[0] for row in rows]
    stored_set = set(stored_ids)
    keys: dict[tuple[Any, Any], int] = {}
    for _, _, payload in rows:
        doc = orjson.loads(payload)
        key = (doc.get("t"), doc.get("n"))
        keys[key] = keys.get(key, 0) + 1
    duplicate_rows = sum(n - 1 for n in keys.values() if n > 1) + (len(stored_ids) - len(stored_set))
    lost = len(accepted_ids - stored_set)
    beyond = len(stored_set - accepted_ids)
    unanswered = result["sent"] - result["answered"]
    elapsed = (t_done - t0) if t_done is not None else None
    cpu_s = meter.seconds
    return {
        "mode": mode,
        "accepted": accepted,
        "accepted_per_s": accepted / result["duration_s"],
        "stored_per_s": accepted / elapsed if elapsed else 0.0,
        "drain_s": (t_done - t_wrk) if t_done is not None else None,
        "lost": lost,
        "duplicate_rows": duplicate_rows,
        "stored_beyond_counted_202": beyond,
        "wrk_unanswered_at_stop": unanswered,
        "unexplained_extra": max(0, beyond - unanswered),
        "non_2xx": result["non_2xx"],
        "statuses": result["statuses"],
        "errors": result["errors"],
        "wrk_latency_ms": {k: v / 1000 for k, v in result["latency_us"].items()},
        "cpu_percent": meter.percent(),
        "machine": meter.noise(),
        "cpu_us_per_message": {k: 1e6 * v / accepted for k, v in cpu_s.items()} if accepted else {},
        "redis_commands_per_message": _per_message(commands_before, commands_after, accepted),
        "ok": lost == 0 and duplicate_rows == 0 and beyond <= unanswered and t_done is not None,
    }


def ingest_without_metrics(mode: str, cfg: Config) -> dict[str, Any]:
    """``ingest_pipeline`` with ``METRICS=0``: the same run without counting anything."""
    return ingest_pipeline(mode, cfg, env={"METRICS": "0"})


def ingest_split(cfg: Config, hook: Hook | None = None, worker_hook: Hook | None = None) -> dict[str, Any]:
    """Each side alone: the web process with no worker running (wrk as above), then the worker
    alone draining what the web accepted. Procfile processes on a private Redis (Unix socket,
    configured like run.py's). Shows each process's own ceiling, without the other competing
    for the two cores."""
    directory = temp_dir("split")
    redis = LocalRedis(directory)
    redis.start()
    env = procs.base_env(directory)
    env["REDIS_URL"] = redis.url
    port = procs.free_port()
    web = worker = None
    try:
        subprocess.run(
            [PYTHON, procs.RUN_PY, "release"], env=env, cwd=procs.ROOT, check=True, capture_output=True
        )
        web = spawn([PYTHON, procs.RUN_PY, "web", "--port", str(port)], env=env, log=directory / "web.log")
        procs.wait_until(lambda: web.poll() is not None or procs._port_open(port), 30, what="web")
        _warm_up(port, 50, "split")
        assert redis.process is not None
        meter = CpuMeter({"web": web.pid, "redis": redis.process.pid}).start()
        finish = _start_hook(hook, {"web": web.pid})
        # Half the usual duration: the worker then drains ~half as many (bounded time).
        half = Config(**{**vars(cfg), "wrk_duration_s": max(2, cfg.wrk_duration_s // 2)})
        result = run_wrk(port, half, "split", directory)
        finish()
        meter.stop()
        accepted_ids = set(result["ids"])
        web_cpu = meter.seconds["web"]

        worker = spawn([PYTHON, procs.RUN_PY, "worker"], env=env, log=directory / "worker.log")
        db = _open_ro(directory / "pipeline.db")
        total_expected = len(accepted_ids) + 50
        # Time from the worker's start (its start-up, ~0.5 s, is included) to the last row.
        commands_before = procs.redis_command_stats(redis.url[len("unix://") :])
        worker_meter = CpuMeter({"worker": worker.pid, "redis": redis.process.pid}).start()
        t0 = time.monotonic()
        finish = _start_hook(worker_hook, {"worker": worker.pid})
        deadline = t0 + cfg.drain_timeout_s
        done = None
        while time.monotonic() < deadline:
            if _stored_count(db) >= total_expected:
                done = time.monotonic()
                break
            time.sleep(0.02)
        worker_meter.stop()
        finish()
        commands_after = procs.redis_command_stats(redis.url[len("unix://") :])
        time.sleep(0.5)
        stored = {row[0] for row in db.execute("SELECT id FROM message")}
        db.close()
    finally:
        for process in (web, worker):
            if process is not None:
                stop(process)
        redis.stop()
        procs.remove_temp_dir(directory)
    accepted = len(accepted_ids)
    return {
        "web_alone_accepted_per_s": accepted / result["duration_s"],
        "web_alone_cpu_us_per_message": 1e6 * web_cpu / max(1, accepted),
        "web_alone_cpu_percent": meter.percent()["web"],
        "worker_alone_stored_per_s": total_expected / (done - t0) if done else 0.0,
        "worker_alone_cpu_us_per_message": 1e6 * worker_meter.seconds["worker"] / total_expected,
        "worker_alone_cpu_percent": worker_meter.percent()["worker"],
        "worker_alone_redis_commands_per_message": _per_message(
            commands_before, commands_after, total_expected
        ),
        "lost": len(accepted_ids - stored),
        "machine": meter.noise(),
        "ok": done is not None and not (accepted_ids - stored),
    }


def _per_message(before: dict[str, int], after: dict[str, int], messages: int) -> dict[str, float]:
    """Redis commands per message, by command (Lua's redis.call()s count too), largest first."""
    if not messages:
        return {}
    diff = {k: (after.get(k, 0) - before.get(k, 0)) / messages for k in after}
    diff = {k: round(v, 2) for k, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v >= 0.01}
    diff["total"] = round(sum(v for k, v in diff.items()), 2)
    return diff


# 2. PUT -> WebSocket latency --------------------------------------------------------------
def _start_hook(hook: Hook | None, pids: dict[str, int]) -> Callable[[], None]:
    if hook is None:
        return lambda: None
    return hook(pids)


def latency(cfg: Config, hook: Hook | None = None) -> dict[str, Any]:
    system = System("run.py", name="latency").start()
    try:
        meter = CpuMeter({name: system.pids[name] for name in ("web", "worker", "redis")}).start()
        finish = _start_hook(hook, system.pids)
        result = uvloop.run(_latency(system.port, cfg))
        finish()
        meter.stop()
    except BaseException:
        system.keep_log()
        raise
    finally:
        system.stop()
    result["cpu_percent"] = meter.percent()
    result["machine"] = meter.noise()
    return result


def _parse_ts(text: str) -> int:
    """'2026-11-27T20:39:01.123456Z' -> ns since the epoch."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return int((moment - datetime(1970, 1, 1)).total_seconds() * 1e6) * 1000


async def _latency(port: int, cfg: Config) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    warmup = 25
    measured = int(cfg.latency_rate * cfg.latency_duration_s)
    total = warmup + measured
    sent: dict[int, tuple[int, int, int, int]] = {}
    received: dict[int, tuple[int, int, dict[str, Any]]] = {}
    order_violations = 0
    all_received = asyncio.Event()

    # The `websockets` client offers permessage-deflate by default, as browsers do.
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:

        async def reader() -> None:
            nonlocal order_violations
            last_seq = 0
            async for frame in ws:
                t, wall = time.perf_counter_ns(), time.time_ns()
                doc = orjson.loads(frame)
                if doc.get("event") != "message":
                    continue
                message = doc["data"]
                if message["seq"] <= last_seq:
                    order_violations += 1
                last_seq = message["seq"]
                payload = message["payload"]
                if isinstance(payload, dict) and "lat" in payload:
                    received[payload["lat"]] = (t, wall, message)
                    if len(received) >= total:
                        all_received.set()

        task = asyncio.create_task(reader())
        pool = HttpPool("127.0.0.1", port)
        await pool.warm(2)
        loop = asyncio.get_running_loop()
        statuses: dict[int, int] = {}

        async def send_one(i: int) -> None:
            stamps: list[int] = []

            def body() -> bytes:
                data = orjson.dumps({"lat": i, "text": "a small JSON document"})
                stamps.append(time.time_ns())
                stamps.append(time.perf_counter_ns())
                return data

            status, _ = await pool.put(body)
            sent[i] = (stamps[1], stamps[0], status, time.perf_counter_ns())
            statuses[status] = statuses.get(status, 0) + 1

        # Open loop: message i leaves at start + i / rate whatever happened to earlier ones.
        start = loop.time() + 0.05
        sends = []
        for i in range(total):
            delay = start + i / cfg.latency_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(send_one(i)))
        achieved_rate = (measured - 1) / max(1e-9, loop.time() - (start + warmup / cfg.latency_rate))
        await asyncio.gather(*sends)
        try:
            await asyncio.wait_for(all_received.wait(), 5.0)
        except TimeoutError:
            pass
        task.cancel()
        connections = pool.size
        await pool.close()

    lat_ms, ack_ms, to_web, to_store, to_ws = [], [], [], [], []
    for i in range(warmup, total):
        t_sent, wall_sent, _status, t_ack = sent[i]
        ack_ms.append((t_ack - t_sent) / 1e6)
        if i not in received:
            continue
        t_recv, wall_recv, message = received[i]
        lat_ms.append((t_recv - t_sent) / 1e6)
        received_at, persisted_at = _parse_ts(message["received_at"]), _parse_ts(message["persisted_at"])
        to_web.append((received_at - wall_sent) / 1e6)
        to_store.append((persisted_at - received_at) / 1e6)
        to_ws.append((wall_recv - persisted_at) / 1e6)
    missing = sum(1 for i in range(total) if i not in received)
    return {
        "messages": measured,
        "achieved_rate": achieved_rate,
        "p50_ms": percentile(lat_ms, 50),
        "p99_ms": percentile(lat_ms, 99),
        "max_ms": max(lat_ms) if lat_ms else float("nan"),
        "put_202_p50_ms": percentile(ack_ms, 50),
        "put_202_p99_ms": percentile(ack_ms, 99),
        "breakdown_p50_ms": {
            "sent -> received_at (web)": statistics.median(to_web) if to_web else None,
            "received_at -> persisted_at (worker)": statistics.median(to_store) if to_store else None,
            "persisted_at -> WS receipt": statistics.median(to_ws) if to_ws else None,
        },
        "missing": missing,
        "order_violations": order_violations,
        "statuses": statuses,
        "sender_connections": connections,
        "ok": missing == 0 and order_violations == 0 and set(statuses) == {202},
    }


# 3 + 6. Fan-out to 1,000 WebSocket clients, and the web process's memory with them -----------
def _readline(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout_s):
            raise TimeoutError(f"client process {process.pid} said nothing for {timeout_s}s")
        return process.stdout.readline().decode().strip()
    finally:
        selector.close()


def fanout(cfg: Config, variant: str, hook: Hook | None = None) -> dict[str, Any]:
    """Variants: "deflate", "plain", and "channels-<C>": clients spread over C channels (each
    client follows one with ?channel=), each channel sent ``fanout_rate`` msg/s, so every
    client receives what it does in "plain" and the difference is the cost of filtering."""
    channel_count = int(variant.removeprefix("channels-")) if variant.startswith("channels-") else 0
    system = System("run.py", name="fanout").start()
    clients: list[subprocess.Popen[bytes]] = []
    directory = system.data_dir
    try:
        web = system.pids["web"]
        time.sleep(1.0)
        rss_before = procs.rss_bytes(web)
        per_process = [cfg.fanout_clients // cfg.fanout_processes] * cfg.fanout_processes
        per_process[0] += cfg.fanout_clients - sum(per_process)
        t_connect = time.monotonic()
        for i, count in enumerate(per_process):
            args = [
                PYTHON, "-m", "bench.fanout_client", "--port", str(system.port), "--clients", str(count),
                "--out", str(directory / f"fanout-{i}.json"),
            ]  # fmt: skip
            if variant == "deflate":
                args.append("--deflate")
            if channel_count:
                args += ["--channels", str(channel_count)]
            clients.append(
                spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, log=directory / f"fanout-{i}.log")
            )
        connected = failed = 0
        for process in clients:
            words = _readline(process, 120).split()
            if not words or words[0] != "READY":
                raise RuntimeError(f"fan-out client said {words!r}; see {directory}")
            connected += int(words[1])
            failed += int(words[2])
        connect_s = time.monotonic() - t_connect
        time.sleep(2.0)  # idle: nothing arriving
        rss_idle = procs.rss_bytes(web)
        _, health = procs.http_get_json(system.port, "/healthz")
        subscribers = health.get("live", {}).get("subscribers") if isinstance(health, dict) else None

        pids = {"web": web, "worker": system.pids["worker"], "redis": system.pids["redis"]}
        pids.update({f"client{i}": p.pid for i, p in enumerate(clients)})
        measured = int(cfg.fanout_rate * cfg.fanout_duration_s)
        meter = CpuMeter(pids).start()
        finish = _start_hook(hook, system.pids)
        send = uvloop.run(_fanout_send(system.port, cfg.fanout_rate, measured, channel_count))
        for process in clients:
            assert process.stdin is not None
            process.stdin.write(orjson.dumps({"expect": send["accepted"], "timeout_s": 30}) + b"\n")
            process.stdin.flush()
        for process in clients:
            if _readline(process, 60) != "DONE":
                raise RuntimeError(f"fan-out client {process.pid} did not finish; see {directory}")
        meter.stop()
        finish()
        time.sleep(1.0)
        rss_after = procs.rss_bytes(web)
        results = [orjson.loads((directory / f"fanout-{i}.json").read_bytes()) for i in range(len(clients))]
        for process in clients:
            assert process.stdin is not None
            process.stdin.write(b"CLOSE\n")
            process.stdin.flush()
        for process in clients:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
    except BaseException:
        system.keep_log()
        raise
    finally:
        for process in clients:
            stop(process)
        system.stop()

    latencies = [v for r in results for v in r["latencies_us"]]
    deliveries_expected = sum(r["expected_deliveries"] for r in results)
    total = lambda key: sum(r[key] for r in results)  # noqa: E731
    cpu = meter.percent()
    client_cpu = sum(v for k, v in cpu.items() if k.startswith("client"))
    out = {
        "variant": variant,
        "channels": channel_count,
        "clients": cfg.fanout_clients,
        "connected": connected,
        "connect_failed": failed,
        "connect_s": connect_s,
        "subscribers_seen_by_web": subscribers,
        "deflate_negotiated": total("deflate_negotiated"),
        "messages": measured * max(1, channel_count),
        "achieved_rate": send["achieved_rate"],
        "put_statuses": send["statuses"],
        "puts_refused": sum(v for k, v in send["statuses"].items() if k != 202),
        "sender_connections": send["connections"],
        "unexpected": total("unexpected"),
        "deliveries": len(latencies),
        "deliveries_expected": deliveries_expected,
        "complete_clients": total("complete"),
        "missing": total("missing"),
        "duplicates": total("duplicates"),
        "order_violations": total("order_violations"),
        "closed_by_server": total("closed"),
        "p50_ms": percentile(latencies, 50) / 1000,
        "p99_ms": percentile(latencies, 99) / 1000,
        "max_ms": (max(latencies) / 1000) if latencies else float("nan"),
        "rss_before_clients_mb": rss_before / 2**20,
        "rss_idle_1000_mb": rss_idle / 2**20,
        "rss_after_traffic_mb": rss_after / 2**20,
        "cpu_percent": {k: v for k, v in cpu.items() if not k.startswith("client")}
        | {"clients(all)": client_cpu},
        "web_cpu_us_per_delivery": 1e6 * meter.seconds["web"] / max(1, len(latencies)),
        "machine": meter.noise(),
    }
    out["ok"] = (
        out["complete_clients"] == cfg.fanout_clients
        and out["missing"] == 0
        and out["duplicates"] == 0
        and out["order_violations"] == 0
        and out["unexpected"] == 0
    )
    return out


async def _fanout_send(port: int, rate: float, count: int, channels: int = 0) -> dict[str, Any]:
    """Send ``count`` measured messages at ``rate``/s, to /messages or to each of ``channels``
    channels (each at ``rate``/s); "accepted" lists the accepted numbers (per channel if any)."""
    pool = HttpPool("127.0.0.1", port)
    await pool.warm(2)
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    # A few unmeasured messages first (they only count for the clients' order check).
    for i in range(5):
        status, _ = await pool.put(lambda i=i: orjson.dumps({"fanout": "w", "n": i}))
        statuses[status] = statuses.get(status, 0) + 1
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)

    accepted: list[int] = []
    by_channel: dict[str, list[int]] = {f"ch{c}": [] for c in range(channels)}

    async def send_one(i: int, channel: str | None) -> None:
        if channel is None:
            status, _ = await pool.put(
                lambda: b'{"fanout":"m","n":%d,"ts":%d,"text":"a small JSON document"}' % (i, time.time_ns())
            )
        else:
            status, _ = await pool.put(
                lambda: (
                    b'{"fanout":"m","n":%d,"c":"%s","ts":%d,"text":"a small JSON document"}'
                    % (i, channel.encode(), time.time_ns())
                ),
                path=f"/channels/{channel}/messages",
            )
        statuses[status] = statuses.get(status, 0) + 1
        if status == 202:
            (accepted if channel is None else by_channel[channel]).append(i)

    # Open loop: message i leaves at start + i / rate whatever happened to earlier ones (with
    # channels, message i of channel c at start + (i + c / channels) / rate).
    start = loop.time()
    sends = []
    for i in range(count):
        for c in range(max(1, channels)):
            delay = start + (i + c / max(1, channels)) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(send_one(i, f"ch{c}" if channels else None)))
    achieved = (count - 1) / max(1e-9, loop.time() - start) if count > 1 else rate
    await asyncio.gather(*sends)
    connections = pool.size
    await pool.close()
    return {
        "statuses": statuses,
        "achieved_rate": achieved,
        "connections": connections,
        "accepted": by_channel if channels else accepted,
    }


# 4. GET /messages of many stored rows -----------------------------------------------------
def make_filled_database(rows: int, channels: int = 0) -> Path:
    """A DATA_DIR whose pipeline.db (schema made by ``run.py release``) holds ``rows`` messages
    (spread round-robin over ``channels`` channels ch0, ch1, ..., or all in ``default``).

    The rows are inserted straight into the SQLite file (one transaction), not through ingest;
    the channel figures are then filled by the same SQL as the schema migration's.
    """
    directory = temp_dir("get-template")
    env = procs.base_env(directory)
    subprocess.run(
        [PYTHON, procs.RUN_PY, "release"], env=env, cwd=procs.ROOT, check=True, capture_output=True
    )
    db = sqlite3.connect(directory / "pipeline.db")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with db:
        db.executemany(
            "INSERT INTO message (id, payload, received_at, persisted_at, channel) VALUES (?, ?, ?, ?, ?)",
            (
                (
                    str(uuid.uuid4()),
                    f'{{"n":{i},"text":"a small JSON document","ok":true,"values":[1,2.5,null]}}',
                    stamp,
                    stamp,
                    f"ch{i % channels}" if channels else "default",
                )
                for i in range(rows)
            ),
        )
        db.execute(FILL_CHANNEL_STATS)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return directory


def get_all(cfg: Config, template: Path) -> dict[str, Any]:
    data_dir = temp_dir("get")
    shutil.copy2(template / "pipeline.db", data_dir / "pipeline.db")
    system = System("run.py", data_dir, name="get")
    system.owns_dir = True
    system.start()
    try:
        web = system.pids["web"]
        time.sleep(1.0)
        rss_before = procs.rss_bytes(web)
        peak = rss_before
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, procs.rss_bytes(web))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        meter = CpuMeter({"web": web}).start()
        cpu0 = procs.cpu_seconds(web)
        with socket.create_connection(("127.0.0.1", system.port)) as sock:
            request = f"GET /messages HTTP/1.1\r\nHost: 127.0.0.1:{system.port}\r\nConnection: close\r\n\r\n"
            chunks = []
            t0 = time.perf_counter()
            sock.sendall(request.encode())
            first_byte = None
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                if first_byte is None:
                    first_byte = time.perf_counter()
                chunks.append(chunk)
            elapsed = time.perf_counter() - t0
        web_cpu = procs.cpu_seconds(web) - cpu0
        meter.stop()
        sampling = False
        sampler.join()
        rss_after = procs.rss_bytes(web)
    except BaseException:
        system.keep_log()
        raise
    finally:
        system.stop()

    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    messages = orjson.loads(body)
    seqs = [m["seq"] for m in messages]
    ascending = all(a < b for a, b in zip(seqs, seqs[1:], strict=False))
    return {
        "rows": len(messages),
        "bytes": len(body),
        "status": status,
        "seconds": elapsed,
        "first_byte_ms": (first_byte - t0) * 1000 if first_byte else None,
        "rows_per_s": len(messages) / elapsed,
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": peak / 2**20,
        "rss_growth_mb": (peak - rss_before) / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "web_cpu_s": web_cpu,
        "machine": meter.noise(),
        "ok": status == 200 and len(messages) == cfg.get_rows and ascending,
    }


def _dechunk(data: bytes) -> bytes:
    out = []
    pos = 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


# 5. Idle CPU ---------------------------------------------------------------------------------
def idle(cfg: Config) -> dict[str, Any]:
    system = System("run.py", name="idle").start()
    try:
        time.sleep(cfg.settle_s)
        pids = {name: system.pids[name] for name in ("web", "worker", "redis", "run.py")}
        meter = CpuMeter(pids).start()
        time.sleep(cfg.idle_s)
        meter.stop()
    except BaseException:
        system.keep_log()
        raise
    finally:
        system.stop()
    cpu = meter.percent()
    return {
        "seconds": meter.wall_s,
        "web_worker_percent": cpu["web"] + cpu["worker"],
        "cpu_percent": cpu,
        "machine": meter.noise(),
    }
