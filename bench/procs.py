"""Starting and stopping what the benchmark runs (always by PID), and reading /proc.

Every process the benchmark starts is registered here and stopped in ``stop_all()`` (SIGTERM,
then SIGKILL by PID after a grace period). Children also get PR_SET_PDEATHSIG, so a benchmark
killed with SIGKILL leaves nothing behind. Nothing is ever stopped by name.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from pipeline import children
from pipeline.children import wait_until
from pipeline.listen import free_port
from pipeline.local_redis import LocalRedis, find_redis_server

__all__ = ["free_port", "wait_until"]  # the benchmark imports them from here

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = str(ROOT / "run.py")
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

_started: list[subprocess.Popen[bytes]] = []
_temp_dirs: list[Path] = []


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (children, hence run.py's web, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def spawn(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """Start a process (pipeline.children.spawn: its own session, dies with us), registered
    for stop_all(); ``log`` takes its output."""
    if log is None:
        process = children.spawn(args, env=env, cwd=cwd, stdin=stdin, stdout=stdout)
    else:
        with open(log, "ab") as handle:  # the child holds its own copy
            out = handle if stdout is None else stdout
            process = children.spawn(args, env=env, cwd=cwd, stdin=stdin, stdout=out, stderr=handle)
    _started.append(process)
    return process


def stop(process: subprocess.Popen[bytes], timeout_s: float = 8.0) -> int | None:
    """SIGTERM by PID, SIGKILL after ``timeout_s``."""
    children.stop(process, timeout_s)
    if process in _started:
        _started.remove(process)
    return process.returncode


def kill_pid_if_alive(pid: int, expected_cmd: str) -> bool:
    """SIGKILL a left-over grandchild (run.py's child) by PID, only if it still is what we started."""
    cmd = cmdline(pid)
    if cmd and expected_cmd in cmd and not is_zombie(pid):
        with _suppress_lookup():
            os.kill(pid, signal.SIGKILL)
        return True
    return False


def stop_all() -> None:
    for process in list(reversed(_started)):
        stop(process, timeout_s=5.0)
    for directory in list(_temp_dirs):
        remove_temp_dir(directory)


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


def temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"pipeline-bench-{prefix}-"))
    _temp_dirs.append(path)
    return path


def remove_temp_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path in _temp_dirs:
        _temp_dirs.remove(path)


# /proc ---------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def is_zombie(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def children_of(pid: int) -> dict[int, str]:
    """Direct children of ``pid`` and their command lines."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry))[1]) == pid:
                found[int(entry)] = cmdline(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return found


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def cpu_pressure_us() -> int | None:
    """Total time some task waited for a CPU (PSI), if the kernel reports it."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return int(line.rsplit("total=", 1)[1])


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop(), and how busy the
    whole machine was meanwhile (this machine is shared: other work shows up there)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.seconds: dict[str, float] = {}
        self.wall_s = 0.0
        self._machine0 = 0.0
        self._psi0: int | None = None
        self.machine_busy_percent = 0.0
        self.cpu_pressure_percent: float | None = None

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._machine0, self._psi0 = machine_busy_seconds(), cpu_pressure_us()
        return self

    def stop(self) -> CpuMeter:
        self.wall_s = time.monotonic() - self._t0
        self.seconds = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        self.machine_busy_percent = 100.0 * (machine_busy_seconds() - self._machine0) / self.wall_s
        psi = cpu_pressure_us()
        if psi is not None and self._psi0 is not None:
            self.cpu_pressure_percent = 100.0 * (psi - self._psi0) / 1e6 / self.wall_s
        return self

    def noise(self) -> dict[str, float | None]:
        """Whole-machine busy % (of one core; 200 = both cores) and PSI 'some' CPU pressure %."""
        return {
            "machine_busy_percent": self.machine_busy_percent,
            "cpu_pressure_percent": self.cpu_pressure_percent,
        }

    def percent(self) -> dict[str, float]:
        return {name: 100.0 * s / self.wall_s for name, s in self.seconds.items()}


# HTTP helpers (stdlib, for orchestration only) -------------------------------------------
def http_get_json(port: int, path: str, timeout_s: float = 3.0) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body
    finally:
        connection.close()


def http_put(port: int, body: bytes, timeout_s: float = 3.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("PUT", "/messages", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def healthy(port: int) -> bool:
    try:
        status, report = http_get_json(port, "/healthz", timeout_s=2.0)
    except OSError:
        return False
    return status == 200 and isinstance(report, dict) and bool(report.get("worker", {}).get("ok"))


# Redis -----------------------------------------------------------------------------------
def redis_version() -> str:
    try:
        out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return out.stdout.strip()


def redis_command_stats(address: Any) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats), by command name."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        sock.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            header, _, rest = data.partition(b"\r\n")
            if header.startswith(b"$") and len(rest) >= int(header[1:]) + 2:
                break
    stats: dict[str, int] = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_") :].partition(":")
            for field in fields.split(","):
                key, _, value = field.partition("=")
                if key == "calls":
                    stats[name] = int(value)
    return stats


# The system under test -------------------------------------------------------------------
def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "PORT", "HOST")}
    env.update(DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return env


class System:
    """The pipeline started as users start it.

    ``mode="run.py"``: ``python run.py --port P`` (private Redis, web, worker as its children).
    ``mode="procfile"``: a private redis-server on loopback TCP, then the Procfile's lines:
    ``python run.py release``, ``python run.py worker``, ``python run.py web --port P``.
    """

    def __init__(
        self,
        mode: str = "run.py",
        data_dir: Path | None = None,
        *,
        name: str = "system",
        env: dict[str, str] | None = None,
    ) -> None:
        assert mode in ("run.py", "procfile")
        self.mode = mode
        self.extra_env = env or {}
        self.owns_dir = data_dir is None
        self.data_dir = data_dir or temp_dir(name)
        self.port = free_port()
        self.pids: dict[str, int] = {}
        self.commands: dict[str, str] = {}
        self._runpy: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._redis: LocalRedis | None = None
        self.log = self.data_dir / "bench-system.log"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "pipeline.db"

    @property
    def redis_address(self) -> Any:
        if self._redis is not None:
            return ("127.0.0.1", self._redis.port)
        sock = self.data_dir / "redis.sock"
        if sock.exists():
            return str(sock)
        for line in self.log.read_text(errors="replace").splitlines():
            if "private Redis at redis://" in line:
                hostport = line.split("redis://", 1)[1].split("/", 1)[0]
                host, _, port = hostport.rpartition(":")
                return (host, int(port))
        raise RuntimeError("cannot find the system's Redis")

    def start(self, timeout_s: float = 30.0) -> System:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.keep_log()
            self.stop()
            raise

    def _start(self, timeout_s: float) -> System:
        env = {**base_env(self.data_dir), **self.extra_env}
        if self.mode == "run.py":
            self._runpy = spawn([PYTHON, RUN_PY, "--port", str(self.port)], env=env, log=self.log)
            self.pids["run.py"] = self._runpy.pid
            runpy = self._runpy
            # run.py listens before it starts anything: wait for an answer, not an open port.
            wait_until(lambda: runpy.poll() is not None or healthy(self.port), timeout_s, what="run.py")
            self._check_alive()
            children = children_of(self._runpy.pid)
            for pid, cmd in children.items():
                if "redis-server" in cmd:
                    self.pids["redis"] = pid
                elif cmd.endswith(" worker") or " worker " in cmd:
                    self.pids["worker"] = pid
                elif " web" in cmd:
                    self.pids["web"] = pid
                self.commands[str(pid)] = cmd
        else:
            self._redis = LocalRedis(self.data_dir, tcp=True).start()
            assert self._redis.process is not None
            self.pids["redis"] = self._redis.process.pid
            env["REDIS_URL"] = self._redis.url
            subprocess.run([PYTHON, RUN_PY, "release"], env=env, cwd=ROOT, check=True, capture_output=True)
            worker = spawn([PYTHON, RUN_PY, "worker"], env=env, log=self.log)
            web = spawn([PYTHON, RUN_PY, "web", "--port", str(self.port)], env=env, log=self.log)
            self._procs = [web, worker]
            self.pids["worker"], self.pids["web"] = worker.pid, web.pid
            wait_until(lambda: web.poll() is not None or _port_open(self.port), timeout_s, what="web")
            self._check_alive()
        missing = {"web", "worker", "redis"} - set(self.pids)
        if missing:
            raise RuntimeError(f"could not find the {missing} process(es); log:\n{self.tail_log()}")
        wait_until(lambda: healthy(self.port), timeout_s, what="/healthz with a live worker")
        return self

    def _check_alive(self) -> None:
        procs = [self._runpy] if self._runpy is not None else self._procs
        for process in procs:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the system exited at start; log:\n{self.tail_log()}")

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def keep_log(self) -> Path | None:
        """Copy this system's log to bench/results/logs/ (done when a scenario fails)."""
        if not self.log.exists():
            return None
        target = ROOT / "bench" / "results" / "logs" / f"{self.data_dir.name}.log"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.log, target)
        return target

    def __enter__(self) -> System:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is not None:
            kept = self.keep_log()
            if kept is not None:
                print(f"  (system log kept in {kept})", file=sys.stderr)
        self.stop()

    def stop(self) -> None:
        if self._runpy is not None:
            stop(self._runpy, timeout_s=10.0)
            # run.py stops its children; anything left (it should not be) goes by PID.
            for name in ("web", "worker", "redis"):
                pid = self.pids.get(name)
                if pid is not None:
                    cmd = self.commands.get(str(pid), "")
                    if cmd and kill_pid_if_alive(pid, cmd):
                        print(f"  warning: {name} (pid {pid}) outlived run.py; killed", file=sys.stderr)
            self._runpy = None
        for process in self._procs:
            stop(process)
        self._procs = []
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self.owns_dir:
            remove_temp_dir(self.data_dir)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False
