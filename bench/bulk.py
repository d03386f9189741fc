"""Bulk ingest next to single-document ingest, in the same run (SPEC §12), and fan-out over two
web processes.

``bulk_vs_single``: on a fresh ``python run.py`` each, (1) wrk PUTs single documents (as the
ingest scenario: 64 connections) and (2) 8 concurrent senders POST 100-document NDJSON batches
of ~200-byte documents, each sending its next batch as soon as the last is answered. For each:
messages stored per second (from the first request until every accepted document is stored),
receipt → stored p50/p99 (``persisted_at - received_at`` of every stored row: the service's own
two timestamps), CPU per message per process, and counted loss and duplication (every accepted
id looked up in the database; every document carries a unique (tag, n)).

``fanout_two_webs``: the fan-out scenario (plain WebSocket) with ``WEB_CONCURRENCY=2``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
import uvloop

from bench import procs, scenarios
from bench.clients import HttpConnection
from bench.procs import CpuMeter, System
from bench.scenarios import Config, percentile

SENDERS = 8
BATCH = 100
PAD = "x" * 150  # a document of ~200 bytes with its tag and number


def _document(tag: str, n: int) -> bytes:
    return orjson.dumps({"t": tag, "n": n, "pad": PAD})


class _BatchConnection(HttpConnection):
    def send_batch(self, body: bytes) -> None:
        assert self._writer is not None
        self._writer.write(
            b"POST /messages HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/x-ndjson\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (self.host.encode(), self.port, len(body), body)
        )


async def _send_batches(port: int, duration_s: float, tag: str) -> dict[str, Any]:
    accepted: list[str] = []
    statuses: dict[int, int] = {}
    answer_ms: list[float] = []
    counter = iter(range(10**9))
    stop_at = time.monotonic() + duration_s

    async def sender() -> None:
        connection = await _BatchConnection("127.0.0.1", port).open()
        try:
            while time.monotonic() < stop_at:
                body = b"\n".join(_document(tag, next(counter)) for _ in range(BATCH))
                started = time.perf_counter()
                connection.send_batch(body)
                status, answer = await connection.read_response()
                answer_ms.append(1000 * (time.perf_counter() - started))
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202:
                    accepted.extend(orjson.loads(answer)["ids"])
                elif status == 503:
                    await asyncio.sleep(0.2)  # pushed back: wait a moment (Retry-After is 2 s)
        finally:
            await connection.close()

    started = time.monotonic()
    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return {
        "ids": accepted,
        "statuses": statuses,
        "duration_s": time.monotonic() - started,
        "answer_p50_ms": percentile(answer_ms, 50),
        "answer_p99_ms": percentile(answer_ms, 99),
        "requests": len(answer_ms),
    }


def _ts_us(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1e6)


def _measure(kind: str, cfg: Config) -> dict[str, Any]:
    system = System("run.py", name=f"bulk-{kind}").start()
    try:
        scenarios._warm_up(system.port, 50, kind)
        db = scenarios._open_ro(system.db_path)
        procs.wait_until(lambda: scenarios._stored_count(db) >= 50, 20, what="warm-up stored")
        base_seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM message").fetchone()[0])
        tag = f"{kind}-{uuid.uuid4().hex[:8]}"
        pids = {name: system.pids[name] for name in ("web", "worker", "redis")}
        meter = CpuMeter(pids).start()
        t0 = time.monotonic()
        if kind == "single":
            result = scenarios.run_wrk(system.port, cfg, tag, system.data_dir)
        else:
            result = uvloop.run(_send_batches(system.port, cfg.wrk_duration_s, tag))
        t_sent = time.monotonic()
        accepted_ids = set(result["ids"])
        t_done = None
        while time.monotonic() < t_sent + cfg.drain_timeout_s:
            count = int(db.execute("SELECT COUNT(*) FROM message WHERE seq > ?", (base_seq,)).fetchone()[0])
            if count >= len(accepted_ids):
                stored_now = {r[0] for r in db.execute("SELECT id FROM message WHERE seq > ?", (base_seq,))}
                if accepted_ids <= stored_now:
                    t_done = time.monotonic()
                    break
            time.sleep(0.02)
        meter.stop()
        time.sleep(1.0)  # requests in flight when the load stopped may still land
        rows = db.execute(
            "SELECT id, payload, received_at, persisted_at FROM message WHERE seq > ? ORDER BY seq",
            (base_seq,),
        ).fetchall()
        db.close()
    except BaseException:
        system.keep_log()
        raise
    finally:
        system.stop()
    stored_ids = [row[0] for row in rows]
    keys: dict[tuple[Any, Any], int] = {}
    for row in rows:
        document = orjson.loads(row[1])
        key = (document.get("t"), document.get("n"))
        keys[key] = keys.get(key, 0) + 1
    duplicates = sum(n - 1 for n in keys.values() if n > 1) + len(stored_ids) - len(set(stored_ids))
    lost = len(accepted_ids - set(stored_ids))
    delays_ms = [(_ts_us(row[3]) - _ts_us(row[2])) / 1000 for row in rows if row[0] in accepted_ids]
    accepted = len(accepted_ids)
    elapsed = (t_done - t0) if t_done is not None else None
    statuses = result["statuses"]
    return {
        "kind": kind,
        "accepted": accepted,
        "stored_per_s": accepted / elapsed if elapsed else 0.0,
        "accepted_per_s": accepted / result["duration_s"],
        "drain_s": (t_done - t_sent) if t_done is not None else None,
        "receipt_to_stored_p50_ms": percentile(delays_ms, 50),
        "receipt_to_stored_p99_ms": percentile(delays_ms, 99),
        "statuses": {str(k): v for k, v in statuses.items()},
        "refused_503": statuses.get(503, 0),
        "lost": lost,
        "duplicates": duplicates,
        "cpu_percent": meter.percent(),
        "cpu_us_per_message": {k: 1e6 * v / accepted for k, v in meter.seconds.items()} if accepted else {},
        "machine": meter.noise(),
        "load_average": os.getloadavg(),
        **(
            {"answer_p50_ms": result["answer_p50_ms"], "answer_p99_ms": result["answer_p99_ms"]}
            if kind == "bulk"
            else {}
        ),
        "ok": lost == 0 and duplicates == 0 and t_done is not None,
    }


def bulk_vs_single(cfg: Config) -> dict[str, Any]:
    """One run: single-document ingest, then bulk, each on a fresh system."""
    single = _measure("single", cfg)
    bulk = _measure("bulk", cfg)
    ratio = bulk["stored_per_s"] / single["stored_per_s"] if single["stored_per_s"] else 0.0
    return {"single": single, "bulk": bulk, "ratio": ratio, "stored_per_s": bulk["stored_per_s"]}


def fanout_two_webs(cfg: Config) -> dict[str, Any]:
    """The plain fan-out with WEB_CONCURRENCY=2 (run.py starts two web processes on one port)."""
    previous = os.environ.get("WEB_CONCURRENCY")
    os.environ["WEB_CONCURRENCY"] = "2"
    try:
        result = scenarios.fanout(cfg, "plain")
    finally:
        if previous is None:
            os.environ.pop("WEB_CONCURRENCY", None)
        else:
            os.environ["WEB_CONCURRENCY"] = previous
    result["web_concurrency"] = 2
    result["load_average"] = os.getloadavg()
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def summary(results: dict[str, Any]) -> str:
    """Medians over the runs, and every run, as text."""
    lines = []
    runs = results.get("bulk", [])
    if runs:
        lines.append(f"bulk vs single (same run; {SENDERS} senders x {BATCH}-document batches vs wrk):")
        for kind in ("single", "bulk"):
            rs = [r[kind] for r in runs]
            cpu = {
                k: _median([r["cpu_us_per_message"].get(k, 0.0) for r in rs])
                for k in ("web", "worker", "redis")
            }
            lines.append(
                f"  {kind:6} stored {_median([r['stored_per_s'] for r in rs]):8,.0f}/s  receipt->stored "
                f"p50 {_median([r['receipt_to_stored_p50_ms'] for r in rs]):6.1f} ms "
                f"p99 {_median([r['receipt_to_stored_p99_ms'] for r in rs]):6.1f} ms  "
                f"CPU us/message " + " ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + "  "
                f"lost {sum(r['lost'] for r in rs)} dup {sum(r['duplicates'] for r in rs)} "
                f"503 {sum(r['refused_503'] for r in rs)}"
            )
        lines.append(f"  ratio bulk/single (median) {_median([r['ratio'] for r in runs]):.1f}x")
        for i, r in enumerate(runs, 1):
            lines.append(
                f"  run {i}: single {r['single']['stored_per_s']:,.0f}/s, "
                f"bulk {r['bulk']['stored_per_s']:,.0f}/s "
                f"(p99 {r['bulk']['receipt_to_stored_p99_ms']:.0f} ms), ratio {r['ratio']:.1f}x, "
                f"load {' '.join(f'{v:.2f}' for v in r['bulk']['load_average'])}"
            )
    fan = results.get("fanout2", [])
    if fan:
        lines.append(f"fan-out, WEB_CONCURRENCY=2, {fan[0]['clients']} clients:")
        for i, r in enumerate(fan, 1):
            lines.append(
                f"  run {i}: rate {r['achieved_rate']:.1f}/s, "
                f"complete {r['complete_clients']}/{r['clients']}, "
                f"missing {r['missing']}, dup {r['duplicates']}, order {r['order_violations']}, "
                f"p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms, "
                f"load {' '.join(f'{v:.2f}' for v in r['load_average'])}"
            )
    return "\n".join(lines)
