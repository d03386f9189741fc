"""Where the time goes: py-spy profiles of the web process and the worker, each under load.

    .venv/bin/python -m bench.profile                     ingest, alone, latency and fan-out
    .venv/bin/python -m bench.profile --only ingest       one of them
    .venv/bin/python -m bench.profile --seconds 10 --rate 200

Needs py-spy (pip install py-spy; it attaches with ptrace, so run as root or with
kernel.yama.ptrace_scope=0). For each scenario it starts the system as the benchmark does,
starts the load, attaches one `py-spy record` to the web process and one to the worker
(separately, at the same time), and writes to bench/results/profile-<time>/:

    <scenario>-<process>.txt      collapsed stacks (py-spy --format raw), e.g. for speedscope
    <scenario>-<process>.svg      flame graphs, from a second load run (--svg)
    summary.txt                   what is printed at the end

Scenarios: ingest (wrk against `run.py`, web and worker), alone (the web process with no
worker running, then the worker alone draining that queue), latency (50 msg/s with one
WebSocket client), fanout (1,000 WebSocket clients at 20 msg/s, with and without
permessage-deflate; web only). --native adds C frames (uvloop, zlib, the kernel's send below
uvloop's write) at the price of pausing the process for each sample.

then prints, per process, the share of its busy samples spent in each layer of the stack
(hypercorn, quart, redis-py, arq, peewee/sqlite, the pipeline's own code, the event loop ...)
and the top functions by self time and by inclusive time. py-spy samples only threads that
are running (not idle), so percentages are of busy time. The load's figures are printed too,
but they are taken under the profiler and are not the benchmark's figures.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import procs, scenarios
from bench.scenarios import Config

RESULTS = Path(__file__).resolve().parent / "results"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Which layer a frame belongs to, by the start of its (py-spy-shortened) file path; first match wins.
LAYERS = [
    ("pipeline (our code)", ("pipeline/", "run.py")),
    ("zlib/compression (wsproto deflate)", ("wsproto/extensions.py",)),
    ("hypercorn", ("hypercorn/",)),
    ("quart", ("quart/",)),
    ("werkzeug", ("werkzeug/",)),
    ("h11/wsproto", ("h11/", "wsproto/")),
    ("redis-py", ("redis/",)),
    ("arq", ("arq/",)),
    ("peewee/sqlite", ("peewee.py", "sqlite3/", "playhouse/")),
    ("zlib/compression (wsproto deflate)", ("zlibmodule.c", "pycore_blocks_output_buffer.h")),
    (
        "event loop (asyncio/uvloop/selectors)",
        ("asyncio/", "uvloop", "selectors.py", "loop.c", "_asynciomodule.c"),
    ),
    ("event loop (asyncio/uvloop/selectors)", ("linux.c", "core.c", "uv-common.c", "heap-inl.h", "queue.h")),
    ("sqlite (C)", ("cursor.c", "connection.c", "sqlite3.c", "statement.c")),
    ("CPython runtime (refcounts, calls)", ("object.h", "abstract.h", "ceval.c", "call.c")),
    ("threads/executor", ("concurrent/", "threading.py", "queue.py")),
    ("json/orjson", ("json/",)),
    ("logging", ("logging/",)),
    ("uuid/datetime/other stdlib", ("uuid.py", "datetime.py", "_strptime.py", "hashlib.py", "functools.py")),
]


# Leaf frames that mean "waiting", not working (py-spy's idle detection misses some of them,
# and with --native a thread blocked in a queue or epoll shows as busy).
IDLE_LEAVES = (
    "_queue_SimpleQueue_get_impl",
    "_worker (concurrent/futures/thread.py)",
    "EpollSelector.select (selectors.py)",
    "epoll_wait",
    "uv__io_poll",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "PyThread_acquire_lock_timed",
    "pthread_cond_timedwait",
    "pthread_cond_wait",
    "do_futex_wait",
    "__futex_abstimed_wait_common",
)


LOOP_ENTRIES = {
    ("Runner.run", "asyncio/runners.py"),
    ("Worker.run", "arq/worker.py"),
    ("run", "uvloop/__init__.py"),
    ("BaseEventLoop.run_until_complete", "asyncio/base_events.py"),
}


def _waiting(stack: tuple[str, ...]) -> bool:
    """True for a sample of a thread that waits (a queue, a lock, epoll) rather than works."""
    code_at = [i for i, frame in enumerate(stack) if ":" in frame and _FRAME.match(frame.strip())]
    if not code_at:
        return False
    func, file = _parse_frame(stack[code_at[-1]])
    tail = " ".join(stack[code_at[-1] + 1 :])
    return f"{func} ({file})".startswith(IDLE_LEAVES) or any(leaf in tail for leaf in IDLE_LEAVES)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    return found


SPY_FLAGS = ["--nonblocking"]


def make_hook(
    out_dir: Path, scenario: str, seconds: float, rate: int, targets: tuple[str, ...], delay_s: float = 0.0
) -> Callable:
    def hook(pids: dict[str, int]) -> Callable[[], None]:
        time.sleep(delay_s)  # e.g. let a fresh worker finish its imports first
        recorders = []
        for name in targets:
            out = out_dir / f"{scenario}-{name}.txt"
            args = [
                py_spy(), "record", "--pid", str(pids[name]), "--duration", str(int(seconds)),
                "--rate", str(rate), "--format", "raw", "--output", str(out), *SPY_FLAGS,
            ]  # fmt: skip
            recorders.append(
                procs.spawn(args, stdout=subprocess.DEVNULL, log=out_dir / f"{scenario}-{name}.log")
            )

        return _waiter(recorders, seconds)

    return hook


def _waiter(recorders: list[subprocess.Popen[bytes]], seconds: float) -> Callable[[], None]:
    """Waits for the py-spy recorders to finish their ``seconds`` (stopping any that hang)."""

    def finish() -> None:
        for recorder in recorders:
            try:
                recorder.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                pass
            procs.stop(recorder)

    return finish


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"] or ""


def _label(func: str, file: str) -> str:
    short = file.split("site-packages/")[-1] if "site-packages/" in file else file.split("/main/")[-1]
    return f"{func} ({short})"


def layer_of(file: str) -> str:
    for name, prefixes in LAYERS:
        if file.startswith(prefixes):
            return name
    return f"other ({file})"


def summarise(path: Path, top: int = 12) -> str:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks[tuple(stack.split(";"))] += int(count)
    sampled = sum(stacks.values())
    stacks = Counter({stack: count for stack, count in stacks.items() if not _waiting(stack)})
    idle = sampled - sum(stacks.values())
    total = sum(stacks.values())
    if not total:
        return f"{path.name}: no samples"
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for stack, count in stacks.items():
        # With --threads, py-spy puts 'thread (0x...)' (or the thread's name) first.
        code = [f for f in stack if _FRAME.match(f.strip()) and ":" in f]
        names = [f for f in stack if f not in code]
        threads[
            "main thread"
            if any("run (pipeline/" in f or "<module> (run.py" in f for f in code)
            else ("store thread" if any("concurrent/futures" in f for f in code) else "other/partial stack")
        ] += count
        del names
        if not code:
            continue
        func, file = _parse_frame(code[-1])
        label = _label(func, file)
        if (func, file) in LOOP_ENTRIES:
            label += " [= time inside the C event loop]"
        self_time[label] += count
        # With --native, a socket write shows as uvloop's try_write (the kernel's send below it).
        if "__try_write" in func:
            layer = "socket writes (kernel send)"
        elif (func, file) in LOOP_ENTRIES:
            # Without --native, time inside uvloop's C loop (I/O, callbacks) shows as self time of
            # the Python frame that entered the loop.
            layer = "event loop (asyncio/uvloop/selectors)"
        else:
            layer = layer_of(file)
        layers[layer] += count
        for label in {_label(*_parse_frame(f)) for f in code}:
            inclusive[label] += count
    lines = [
        f"{path.stem}: {total} busy samples ({idle} samples of threads waiting in a queue/epoll left out, "
        f"{100 * idle / max(1, sampled):.0f}% of all)"
    ]
    lines.append(
        "  by layer (self time): " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in layers.most_common())
    )
    if len(threads) > 1:
        lines.append(
            "  by thread: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in threads.most_common(5))
        )
    lines.append("  top self time:")
    lines += [f"    {100 * v / total:5.1f}%  {k}" for k, v in self_time.most_common(top)]
    lines.append("  top inclusive time:")
    lines += [f"    {100 * v / total:5.1f}%  {k}" for k, v in inclusive.most_common(top + 8)]
    ours = [
        (k, v)
        for k, v in inclusive.most_common()
        if "(pipeline/" in k and not k.startswith(("run (", "main ("))
    ]
    lines.append("  the pipeline's own functions, inclusive:")
    lines += [f"    {100 * v / total:5.1f}%  {k}" for k, v in ours[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", default="ingest,alone,latency,fanout", help="ingest,alone,latency,fanout")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="profile length (load runs a little longer)"
    )
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--svg", action="store_true", help="also record SVG flame graphs (a second load run)")
    parser.add_argument(
        "--native",
        action="store_true",
        help="include C frames (uvloop, zlib, sockets); pauses the process per sample",
    )
    args = parser.parse_args(argv)
    if args.native:
        SPY_FLAGS[:] = ["--native"]
    procs.raise_nofile_limit()
    out_dir = RESULTS / f"profile-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config(runs=1)
    cfg.wrk_duration_s = int(args.seconds) + 2
    cfg.latency_duration_s = args.seconds + 1
    cfg.fanout_duration_s = args.seconds + 1
    only = args.only.split(",")
    reports = []
    try:
        if "ingest" in only:
            hook = make_hook(out_dir, "ingest", args.seconds, args.rate, ("web", "worker"))
            result = scenarios.ingest_pipeline("run.py", cfg, hook)
            print(
                f"ingest under the profiler: accepted {result['accepted_per_s']:.0f}/s, stored "
                f"{result['stored_per_s']:.0f}/s, CPU {result['cpu_percent']}"
            )
            reports += [summarise(out_dir / "ingest-web.txt"), summarise(out_dir / "ingest-worker.txt")]
        if "alone" in only:
            # The web process with no worker, then the worker alone draining the queue it filled.
            web_hook = make_hook(out_dir, "alone", args.seconds, args.rate, ("web",))
            worker_hook = make_hook(
                out_dir, "alone", min(args.seconds, 6), args.rate, ("worker",), delay_s=1.5
            )
            result = scenarios.ingest_split(cfg, web_hook, worker_hook)
            print(
                f"alone under the profiler: web accepted {result['web_alone_accepted_per_s']:.0f}/s, worker "
                f"stored {result['worker_alone_stored_per_s']:.0f}/s"
            )
            reports += [summarise(out_dir / "alone-web.txt"), summarise(out_dir / "alone-worker.txt")]
        if "latency" in only:
            hook = make_hook(out_dir, "latency", args.seconds, args.rate, ("web", "worker"))
            result = scenarios.latency(cfg, hook)
            print(
                f"latency under the profiler: p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms, "
                f"CPU {result['cpu_percent']}"
            )
            reports += [summarise(out_dir / "latency-web.txt"), summarise(out_dir / "latency-worker.txt")]
        if "fanout" in only:
            hook = make_hook(out_dir, "fanout", args.seconds, args.rate, ("web",))
            result = scenarios.fanout(cfg, "deflate", hook)
            print(
                f"fan-out under the profiler: p99 {result['p99_ms']:.0f} ms, "
                f"refused {result['puts_refused']}, CPU {result['cpu_percent']}"
            )
            reports.append(summarise(out_dir / "fanout-web.txt"))
            hook = make_hook(out_dir, "fanout-plain", args.seconds, args.rate, ("web",))
            result = scenarios.fanout(cfg, "plain", hook)
            print(
                f"fan-out (no compression) under the profiler: p99 {result['p99_ms']:.0f} ms, refused "
                f"{result['puts_refused']}, CPU {result['cpu_percent']}"
            )
            reports.append(summarise(out_dir / "fanout-plain-web.txt"))
        if args.svg:
            for name in only:
                svg_hook = make_svg_hook(out_dir, name, args.seconds, args.rate)
                if name == "ingest":
                    scenarios.ingest_pipeline("run.py", cfg, svg_hook)
                elif name == "latency":
                    scenarios.latency(cfg, svg_hook)
                elif name == "fanout":
                    scenarios.fanout(cfg, "deflate", svg_hook)
    finally:
        procs.stop_all()
    text = "\n\n".join(reports)
    (out_dir / "summary.txt").write_text(text + "\n")
    print()
    print(text)
    print(f"\nprofiles in {out_dir}")
    return 0


def make_svg_hook(out_dir: Path, scenario: str, seconds: float, rate: int) -> Callable:
    targets = ("web",) if scenario == "fanout" else ("web", "worker")

    def hook(pids: dict[str, int]) -> Callable[[], None]:
        recorders = [
            procs.spawn(
                [
                    py_spy(),
                    "record",
                    "--pid",
                    str(pids[name]),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    str(rate),
                    "--format",
                    "flamegraph",
                    "--output",
                    str(out_dir / f"{scenario}-{name}.svg"),
                    *SPY_FLAGS,
                ],
                stdout=subprocess.DEVNULL,
                log=out_dir / f"{scenario}-{name}-svg.log",
            )
            for name in targets
        ]

        return _waiter(recorders, seconds)

    return hook


if __name__ == "__main__":
    sys.exit(main())
