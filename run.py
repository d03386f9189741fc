#!/usr/bin/env python3
"""The pipeline's one command.

    python run.py [--host H] [--port P]    everything on this machine: (private Redis) + web + worker
    python run.py web [--host H] [--port P]    one web process (the Procfile's web:)
    python run.py worker                       one arq worker (the Procfile's worker:)
    python run.py release                      create tables; idempotent (the Procfile's release:)
    python run.py retry-failed                 queue again the messages whose store gave up

Settings come from the environment (see README); flags override HOST and PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from pipeline.children import spawn, stop
from pipeline.config import ConfigError, Settings, child_environ, load_settings
from pipeline.files import narrow_data, owner_only, private_dir
from pipeline.listen import PortUnavailable, adopt, listen
from pipeline.local_redis import LocalRedis, RedisNotFound

HERE = Path(__file__).resolve().parent
_READY_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 3.5
_QUICK_EXIT_S = 5.0

log = logging.getLogger("run")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    owner_only()  # data files readable by their owner only (SPEC §8), also in every child
    _configure_logging()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"run.py: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.host is not None:
        settings = settings.with_overrides(host=args.host)
    if args.port is not None:
        settings = settings.with_overrides(port=args.port)

    if args.command == "release":
        return release(settings)
    if args.command == "retry-failed":
        return retry_failed(settings)
    if args.command in ("web", "worker") and not settings.redis_url:
        print(
            f"run.py {args.command}: REDIS_URL is not set (only `python run.py` starts its own Redis)",
            file=sys.stderr,
        )
        return 2
    if settings.database_url:
        narrow_data(settings.data_dir, settings.database_url)
    if args.command == "web":
        from pipeline import web

        # The port first: busy, the web process stops here, before anything else starts.
        try:
            listener = adopt(args.fd) if args.fd is not None else listen(settings.host, settings.port)[0]
        except PortUnavailable as exc:
            print(f"run.py web: {exc}", file=sys.stderr)
            return 1
        web.run(settings, listener)
        return 0
    if args.command == "worker":
        from pipeline import worker

        worker.run(settings)
        return 0
    return run_all(settings)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command", nargs="?", default="all", choices=["all", "web", "worker", "release", "retry-failed"]
    )
    parser.add_argument("--host", help="address the web process listens on (default $HOST or 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="port the web process listens on (default $PORT or 3579)")
    parser.add_argument("--fd", type=int, help="web: serve on this inherited listening socket (run.py's use)")
    return parser.parse_args(argv)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 1 and 65535, got {value}")
    return value


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    # arq logs every job at INFO; at thousands a second that is noise (and payload text).
    logging.getLogger("arq").setLevel(logging.WARNING)


def release(settings: Settings) -> int:
    """Create or migrate the tables (safe to run any number of times, and several at once)."""
    from pipeline.store import TRANSIENT_ERRORS, Store, prepare_database

    async def create() -> None:
        store = Store(settings.database_url, threads=1)
        try:
            await prepare_database(store)
        finally:
            await store.close()

    try:
        asyncio.run(create())
    except TRANSIENT_ERRORS as exc:
        print(f"run.py release: the database is unavailable: {exc}", file=sys.stderr)
        return 1
    log.info("tables ready in %s", _redacted(settings.database_url))
    return 0


def retry_failed(settings: Settings) -> int:
    """Queue again every message recorded as failed (after fixing what made it fail)."""
    from pipeline import bus

    url = settings.redis_url
    if url is None and (settings.data_dir / "redis.sock").exists():
        url = f"unix://{(settings.data_dir / 'redis.sock').resolve()}"  # a running `python run.py`
    if url is None:
        print(
            "run.py retry-failed: set REDIS_URL (or run it beside a running `python run.py`)", file=sys.stderr
        )
        return 2

    try:
        count = asyncio.run(bus.retry_failed(url))
    except bus.Unavailable as exc:
        print(f"run.py retry-failed: Redis is unavailable: {exc}", file=sys.stderr)
        return 1
    log.info("queued %d failed message(s) again", count)
    return 0


def run_all(settings: Settings) -> int:
    """Run Redis (unless REDIS_URL is set), the worker and the web process until Ctrl-C."""
    private_dir(settings.data_dir)
    lock = _lock_data_dir(settings.data_dir)
    if lock is None:
        print(f"run.py: another run.py is already using {settings.data_dir.resolve()}", file=sys.stderr)
        return 1
    # The port before anything starts: busy, run.py stops here with one line (SPEC §6).
    try:
        listeners = listen(settings.host, settings.port, settings.web_concurrency)
    except PortUnavailable as exc:
        lock.close()
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        # Unwind at once from wherever run.py is (starting Redis, waiting for the web
        # process...) into the `finally` that stops what was started.
        nonlocal stopping
        if not stopping:
            stopping = True
            raise _Stop

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    local_redis = None
    children: dict[str, _Child] = {}
    try:
        if not settings.redis_url:
            local_redis = LocalRedis(settings.data_dir)
            settings = settings.with_overrides(redis_url=local_redis.start().url)
            log.info("private Redis at %s (data in %s)", settings.redis_url, local_redis.data_dir)
        if release(settings) != 0:
            return 1
        env = child_environ(settings)
        run_py = [sys.executable, str(HERE / "run.py")]
        for number, sock in enumerate(listeners, 1):
            fd = sock.fileno()
            children[f"web.{number}"] = _Child([*run_py, "web", "--fd", str(fd)], env, fd)
        children["worker"] = _Child([*run_py, "worker"], env)
        for child in children.values():
            child.start()
        if not _wait_until_serving(settings, [children[f"web.{n}"] for n in range(1, len(listeners) + 1)]):
            return 1
        url = f"http://{_display_host(settings.host)}:{settings.port}/"
        print(f"Pipeline running at {url}  (Ctrl-C to stop)", flush=True)
        while not stopping:
            time.sleep(0.1)
            for name, child in children.items():
                if child.exited() and not stopping and not child.restart():
                    log.error("%s keeps exiting at start; stopping", name)
                    return 1
        return 0
    except _Stop:
        return 0
    except RedisNotFound as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    finally:
        stopping = True  # a signal from now on must not cut the stopping short
        log.info("stopping")
        # Web first (stop taking messages), then the worker (finish what is queued), Redis last.
        for child in children.values():
            child.terminate()
        for child in children.values():
            child.wait(_STOP_TIMEOUT_S)
        if local_redis is not None:
            local_redis.stop(timeout_s=1.0)
        for sock in listeners:
            sock.close()
        lock.close()
        log.info("stopped")


class _Stop(BaseException):  # noqa: N818 - like KeyboardInterrupt: no `except Exception` swallows it
    """SIGINT or SIGTERM reached run.py."""


class _Child:
    """A child process that run.py restarts if it dies, unless it dies right at start."""

    def __init__(self, args: list[str], env: dict[str, str], fd: int | None = None) -> None:
        self.args, self.env = args, env
        self.pass_fds = () if fd is None else (fd,)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.process = spawn(self.args, env=self.env, pass_fds=self.pass_fds)
        self.started_at = time.monotonic()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def restart(self) -> bool:
        assert self.process is not None
        if time.monotonic() - self.started_at < _QUICK_EXIT_S:
            return False
        log.warning("%s exited with %s; restarting", " ".join(self.args[2:]), self.process.returncode)
        self.start()
        return True

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.process is not None:
            stop(self.process, timeout_s)


def _lock_data_dir(data_dir: Path) -> IO[str] | None:
    handle = open(data_dir / "run.lock", "w")  # noqa: SIM115 - held for the life of run.py
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _wait_until_serving(settings: Settings, webs: list[_Child]) -> bool:
    """Wait until the port answers HTTP. run.py listens already, so a connection is accepted at
    once; the answer comes when a web process serves."""
    host = _display_host(settings.host).strip("[]")
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, settings.port), timeout=1.0) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                while time.monotonic() < deadline:
                    if any(web.exited() for web in webs):
                        log.error("the web process exited at start")
                        return False
                    try:
                        return sock.recv(5) == b"HTTP/"
                    except TimeoutError:
                        continue
        except OSError:
            time.sleep(0.05)
    log.error("the web process did not answer within %.0fs", _READY_TIMEOUT_S)
    return False


def _display_host(host: str) -> str:
    """Where a browser on this machine reaches ``host`` (a wildcard: over loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host.strip("[]") == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


if __name__ == "__main__":
    sys.exit(main())
