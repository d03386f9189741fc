"""Real parts for tests: a private redis-server, the pipeline's processes, stream readers.

Everything here starts real processes and stops them by PID; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import redis

from pipeline.children import spawn, wait_until
from pipeline.children import stop as stop_process
from pipeline.listen import free_port
from pipeline.local_redis import LocalRedis

__all__ = ["free_port", "stop_process", "wait_until"]  # tests import them from here

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = str(ROOT / "run.py")


class RedisServer(LocalRedis):
    """A private redis-server on a free loopback port, with its files in ``directory``; tests
    also look inside it, kill it and pause it."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        super().__init__(directory, tcp=True, appendonly=appendonly)

    def start(self) -> RedisServer:
        super().start()
        return self

    def command(self, *args: str) -> bytes:
        """Send one command and return the raw reply (tests use it to look inside)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(payload.encode())
            time.sleep(0.05)
            return sock.recv(65536)

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class Pipeline:
    """The pipeline's processes, started the way the Procfile does (``python run.py web|worker``)."""

    def __init__(self, directory: Path, redis_url: str, database_url: str, **env: str) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "DATA_DIR": str(directory),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.webs: list[tuple[subprocess.Popen[bytes], int]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return spawn([sys.executable, RUN_PY, *args], env=env, stdout=log, stderr=log, cwd=ROOT)

    def release(self) -> None:
        subprocess.run([sys.executable, RUN_PY, "release"], env=self.env, check=True, capture_output=True)

    def start_web(self, port: int | None = None, **env: str) -> str:
        port = port or free_port()
        process = self._spawn(f"web-{port}", ["web", "--port", str(port)], {**self.env, **env})
        self.webs.append((process, port))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _responds(url) or process.poll() is not None, timeout_s=20)
        assert process.poll() is None, f"web exited: {self.log(f'web-{port}')}"
        return url

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        process = self._spawn(f"worker-{len(self.workers)}", ["worker"], {**self.env, **env})
        self.workers.append(process)
        return process

    def wait_healthy(self, url: str, timeout_s: float = 20) -> dict[str, Any]:
        def healthy() -> dict[str, Any] | None:
            try:
                response = httpx.get(f"{url}/healthz", timeout=3)
            except httpx.HTTPError:
                return None
            return response.json() if response.status_code == 200 else None

        report: dict[str, Any] = wait_until(healthy, timeout_s=timeout_s)
        return report

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.directory.glob("*.log"))
        )

    def stop_workers(self, sig: int = signal.SIGTERM) -> None:
        for process in self.workers:
            stop_process(process, sig=sig)
        self.workers = []

    def stop(self) -> None:
        for process, _ in self.webs:
            stop_process(process)
        self.stop_workers()
        self.webs = []
        for log in self._logs:
            log.close()
        self._logs = []


def _responds(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
        return True
    except httpx.HTTPError:
        return False


def send(client: httpx.Client, document: Any, **headers: str) -> httpx.Response:
    """PUT one JSON document; the response as it came."""
    return client.put("/messages", content=json.dumps(document), headers=headers)


def stored(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/messages")
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


def wait_stored(client: httpx.Client, count: int, timeout_s: float = 15) -> list[dict[str, Any]]:
    """Wait until at least ``count`` messages are stored; return them all."""

    def enough() -> list[dict[str, Any]] | None:
        rows = stored(client)
        return rows if len(rows) >= count else None

    result: list[dict[str, Any]] = wait_until(enough, timeout_s)
    return result


class SSEReader:
    """Reads a Server-Sent Events stream into events (dicts of field -> value)."""

    def __init__(self, client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> None:
        self._context = client.stream("GET", path, headers=headers or {}, timeout=httpx.Timeout(30, read=30))
        self.response = self._context.__enter__()
        self._lines: Iterator[str] = self.response.iter_lines()

    def next_event(self) -> dict[str, str]:
        """The next event or comment (a comment comes back as {"comment": text})."""
        event: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if event:
                    return event
                continue
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[field] = event[field] + "\n" + value if field in event else value
        raise EOFError("stream ended")

    def messages(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` message events, parsed, skipping pings."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            event = self.next_event()
            if event.get("event") == "message":
                message = json.loads(event["data"])
                assert event["id"] == str(message["seq"])
                found.append(message)
        return found

    def close(self) -> None:
        self._context.__exit__(None, None, None)


class Sender(threading.Thread):
    """Sends JSON documents in a loop (optionally round-robin over several webs) and keeps count.

    ``accepted`` holds the ids that got a 202; ``refused`` the status codes of clear errors;
    ``unknown`` counts requests whose outcome a client cannot know: no answer at all, or a 503
    whose problem says ``"outcome": "unknown"``.
    """

    def __init__(self, urls: list[str], *, interval_s: float = 0.005, payload_bytes: int = 0) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.interval_s = interval_s
        self.padding = "x" * payload_bytes
        self.accepted: list[str] = []
        self.refused: list[int] = []
        self.unknown = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=10) for url in self.urls]
        number = 0
        try:
            while not self._stop_event.is_set():
                client = clients[number % len(clients)]
                try:
                    response = client.put("/messages", content=json.dumps({"n": number, "pad": self.padding}))
                except httpx.HTTPError:
                    self.unknown += 1
                else:
                    if response.status_code == 202:
                        self.accepted.append(response.json()["id"])
                    elif response.json().get("outcome") == "unknown":
                        self.unknown += 1  # the service said it cannot know (connection dropped)
                    else:
                        assert response.headers["content-type"] == "application/problem+json"
                        self.refused.append(response.status_code)
                number += 1
                self._stop_event.wait(self.interval_s)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


def assert_stored_exactly_once(
    client: httpx.Client, sender: Sender, timeout_s: float = 40
) -> list[dict[str, Any]]:
    """Every accepted message is stored once; nothing refused is stored. Returns the rows."""
    accepted = set(sender.accepted)
    assert len(accepted) == len(sender.accepted)

    def complete() -> list[dict[str, Any]] | None:
        rows = stored(client)
        return rows if accepted <= {row["id"] for row in rows} else None

    rows: list[dict[str, Any]] = wait_until(complete, timeout_s=timeout_s, interval_s=0.2)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "a message was stored twice"
    extra = set(ids) - accepted
    # Only a request that never got an answer may have been stored without a 202.
    assert len(extra) <= sender.unknown, f"{len(extra)} stored without a 202"
    seqs = [row["seq"] for row in rows]
    assert seqs == sorted(seqs)
    return rows


class Follower(threading.Thread):
    """A WebSocket (or SSE) client that follows the stream like the page does: on any close it
    reconnects with ``after=<last seq it saw>``. Records what arrived and any order violation."""

    def __init__(self, url: str, *, transport: str = "ws", after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.transport = transport
        self.last_seq = after
        self.received: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.close_codes: list[int | None] = []
        self.violations: list[str] = []
        self.connected = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                if self.transport == "ws":
                    self._follow_ws()
                else:
                    self._follow_sse()
            except Exception:  # noqa: BLE001 - any failure means: reconnect, like a browser
                pass
            self._stop_event.wait(0.2)

    def _query(self) -> str:
        return "" if self.last_seq is None else f"?after={self.last_seq}"

    def _follow_ws(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        with connect(self.url.replace("http://", "ws://") + "/ws" + self._query(), open_timeout=5) as ws:
            self.connected.set()
            try:
                while not self._stop_event.is_set():
                    try:
                        frame = json.loads(ws.recv(timeout=0.2))
                    except TimeoutError:
                        continue
                    if frame["event"] == "message":
                        self._record(frame["data"])
            except ConnectionClosed as closed:
                self.close_codes.append(closed.rcvd.code if closed.rcvd else None)

    def _follow_sse(self) -> None:
        headers = {} if self.last_seq is None else {"Last-Event-ID": str(self.last_seq)}
        timeout = httpx.Timeout(5, read=0.5)
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", self.url + "/events", headers=headers) as response,
        ):
            self.connected.set()
            data: list[str] = []
            lines = response.iter_lines()
            while not self._stop_event.is_set():
                try:
                    line = next(lines)
                except httpx.ReadTimeout:
                    continue
                except StopIteration:
                    self.close_codes.append(None)
                    return
                if line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    self._record(json.loads("\n".join(data)))
                    data = []

    def _record(self, message: dict[str, Any]) -> None:
        if self.last_seq is not None and message["seq"] <= self.last_seq:
            self.violations.append(f"seq {message['seq']} after {self.last_seq}")
        self.last_seq = message["seq"]
        self.received.append(message)
        self.received_at.append(time.time())

    def wait_for(self, ids: set[str], timeout_s: float = 30) -> None:
        wait_until(lambda: ids <= {m["id"] for m in self.received}, timeout_s=timeout_s, interval_s=0.1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


class RunPy:
    """``python run.py`` as a user starts it, in its own data folder."""

    def __init__(self, data_dir: Path, port: int, **env: str) -> None:
        self.data_dir, self.port = data_dir, port
        self.env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **env}
        self.env.pop("REDIS_URL", None)
        self.env.pop("DATABASE_URL", None)
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunPy:
        self.process = subprocess.Popen(
            [sys.executable, RUN_PY, "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("Pipeline running at "):
                assert line.split()[3] == f"{self.url}/"
                break
            assert time.monotonic() < deadline, "".join(self.output)
        else:
            raise AssertionError("run.py exited:\n" + "".join(self.output))
        # Keep reading, or run.py and its children would block once the pipe is full.
        threading.Thread(target=self._drain, args=(self.process.stdout,), daemon=True).start()
        return self

    def _drain(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.output.append(line)

    def descendants(self) -> set[int]:
        """PIDs of every process run.py started (children and theirs)."""
        assert self.process is not None
        return descendants(self.process.pid)

    def interrupt(self) -> float:
        """Ctrl-C: SIGINT to run.py; returns how long it took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        self.process.wait(15)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@contextlib.contextmanager
def procfile_scaled_out(redis_url: str, database_url: str, log_path: Path) -> Iterator[list[str]]:
    """The Procfile as a platform runs it (honcho): ``release``, then 2 web and 2 worker
    processes on one Redis and database; yields the two web URLs once both are healthy and stops
    every process (its process group) afterwards."""
    base_port = free_port(count=2)  # honcho gives web.1 this port, web.2 the next
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "WORKER_MAX_JOBS": "50",
        "PYTHONUNBUFFERED": "1",
        # The Procfile says `python`: the one of this virtual environment, as on a platform.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    honcho = [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)]
    subprocess.run([*honcho, "start", "release"], env=env, check=True, capture_output=True, timeout=60)
    with open(log_path, "wb") as log:
        processes = subprocess.Popen(
            [*honcho, "start", "-p", str(base_port), "-c", "web=2,worker=2", "web", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        webs = [f"http://127.0.0.1:{base_port}", f"http://127.0.0.1:{base_port + 1}"]
        try:
            for web in webs:
                try:
                    Pipeline.wait_healthy(None, web)  # type: ignore[arg-type]
                except TimeoutError as exc:
                    said = log_path.read_text()
                    raise AssertionError(f"{web} never turned healthy; honcho said:\n{said}") from exc
            yield webs
        finally:
            os.killpg(processes.pid, signal.SIGTERM)
            try:
                processes.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(processes.pid, signal.SIGKILL)
                processes.wait()


def metric_samples(client: httpx.Client) -> dict[str, float]:
    """``GET /metrics`` as ``{'name{labels}': value}`` (Prometheus text format, comments dropped)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{'name{labels}': value}`` (comments dropped)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def descendants(pid: int) -> set[int]:
    """PIDs of the children of ``pid``, and theirs."""
    parents = {pid}
    found: set[int] = set()
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) in parents:
                found.add(int(entry.name))
                parents.add(int(entry.name))
                changed = True
    return found


def marked_processes(mark: str) -> set[int]:
    """Live processes whose environment has ``PIPELINE_TEST_MARK=<mark>`` (a test sets it on
    what it starts; children inherit it): how a test finds what a process it started left
    behind, even re-parented. (Not redis-server: its process title overwrites its environment.)"""
    needle = f"PIPELINE_TEST_MARK={mark}".encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def cmdline(pid: int) -> list[bytes]:
    """The arguments ``pid`` runs with ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def websocket_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each server frame in ``data``, bytes read after the handshake
    (RFC 6455 §5.2: server frames are not masked); a frame cut short keeps what arrived."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack(">H", data[at : at + 2])
            at += 2
        elif length == 127:
            (length,) = struct.unpack(">Q", data[at : at + 8])
            at += 8
        frames.append((opcode, data[at : at + length]))
        at += length
    return frames


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def in_progress(redis_url: str) -> set[str]:
    """Ids of the jobs some worker has claimed and not finished (arq's in-progress keys)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return {key.decode().rsplit(":", 1)[1] for key in client.scan_iter("arq:in-progress:*")}
    finally:
        client.close()


def queued(redis_url: str) -> int:
    """Jobs on the queue, waiting or running."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard("arq:queue"))
    finally:
        client.close()


class SqliteLock:
    """Holds SQLite's write lock, so a worker's commit waits (up to its busy timeout, 3 s)."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None)
        self._connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._connection.in_transaction:
            self._connection.execute("COMMIT")
        self._connection.close()


def count_rows(path: Path) -> int:
    """Rows in the message table, read straight from the SQLite file."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM message").fetchone()[0])


class Gate(threading.Thread):
    """A TCP relay to Redis that a test can shut: while shut, nothing a client sends reaches Redis
    (as when a network path stalls). Opening it cuts the connections that stalled, so what they
    sent is lost for good, and new connections go through again."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def run(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, outgoing: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if outgoing:
                    self._open.wait()
                    if source.fileno() == -1:
                        break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def shut(self) -> None:
        self._open.clear()

    def open(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._open.set()

    def close(self) -> None:
        self._listener.close()
        self.open()


def pipelined(url: str, documents: list[str]) -> list[str]:
    """PUT documents on one connection, HTTP/1.1-pipelined: the server accepts them one after
    another, as fast as it can (several in one millisecond). Returns the ids, in order."""
    host, port = url.removeprefix("http://").split(":")
    requests = b"".join(
        f"PUT /messages HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(doc)}\r\n\r\n{doc}".encode()
        for doc in documents
    )
    answers = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(requests)
        while answers.count(b"HTTP/1.1 ") < len(documents) or not answers.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, answers[-500:]
            answers += chunk
    assert answers.count(b"HTTP/1.1 202 ") == len(documents), answers[:500]
    return [match.decode() for match in re.findall(rb'"id":"([0-9a-f-]{36})"', answers)]
