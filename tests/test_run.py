"""``python run.py``: one command runs everything, Ctrl-C stops everything (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import (
    RUN_PY,
    Pipeline,
    RedisServer,
    RunPy,
    alive,
    cmdline,
    descendants,
    free_port,
    marked_processes,
    send,
    wait_stored,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def run_py(tmp_path: Path) -> Iterator[RunPy]:
    runner = RunPy(tmp_path / "data", free_port())
    yield runner
    runner.stop()


def test_one_command_runs_everything_and_ctrl_c_stops_it(run_py: RunPy) -> None:
    run_py.start()
    children = run_py.descendants()
    assert len(children) >= 3  # Redis, web, worker
    with httpx.Client(base_url=run_py.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        with connect(run_py.url.replace("http", "ws") + "/ws") as ws:
            ack = send(client, {"hello": "world"}).json()
            frame = json.loads(ws.recv(timeout=10))
        assert frame["event"] == "message" and frame["data"]["id"] == ack["id"]
        assert wait_stored(client, 1)[0]["payload"] == {"hello": "world"}
    took = run_py.interrupt()
    assert run_py.process is not None and run_py.process.returncode == 0
    assert took < 5, f"took {took:.1f}s to stop"
    assert not [pid for pid in children if alive(pid)], "processes left behind"
    assert (run_py.data_dir / "pipeline.db").exists()
    assert list(run_py.data_dir.glob("appendonlydir/*.aof")) or list(run_py.data_dir.glob("*.aof"))


def test_accepted_messages_survive_a_restart(run_py: RunPy) -> None:
    run_py.start()
    with httpx.Client(base_url=run_py.url, timeout=10) as client:
        assert send(client, "stored before").status_code == 202
        wait_stored(client, 1)
        worker = _worker_pid(run_py)
        os.kill(worker, signal.SIGSTOP)  # the worker hangs: accepted messages wait in Redis
        ids = [send(client, {"queued": n}).json()["id"] for n in range(20)]
        assert len(client.get("/messages").json()) == 1
    run_py.interrupt()

    run_py.start()  # a fresh run.py on the same data folder: Redis reloads its append-only file
    with httpx.Client(base_url=run_py.url, timeout=10) as client:
        rows = wait_stored(client, 21)
        time.sleep(1)
        rows = client.get("/messages").json()
    assert [row["payload"] for row in rows] == ["stored before"] + [{"queued": n} for n in range(20)]
    assert [row["id"] for row in rows[1:]] == ids


def _worker_pid(run_py: RunPy) -> int:
    for pid in run_py.descendants():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[-2:] == [b"worker", b""]:
            return pid
    raise AssertionError("no worker process")


def test_a_second_run_on_the_same_data_folder_is_refused(run_py: RunPy, tmp_path: Path) -> None:
    run_py.start()
    second = subprocess.run(
        [sys.executable, RUN_PY, "--port", str(free_port())],
        env=run_py.env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert second.returncode == 1
    assert "already using" in second.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PORT", "abc"), ("MAX_BODY_BYTES", "-1"), ("REDIS_URL", "http://x"), ("DATABASE_URL", "mysql://x/y")],
)
def test_a_bad_setting_stops_at_start_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path), variable: value}
    for command in ([], ["web"], ["worker"], ["release"]):
        result = subprocess.run(
            [sys.executable, RUN_PY, *command], env=env, capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and variable in lines[0], result.stderr


def test_web_and_worker_need_a_redis_url(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, RUN_PY, "web"], env=env, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2 and "REDIS_URL" in result.stderr


def test_release_is_idempotent(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    for _ in range(2):
        subprocess.run(
            [sys.executable, RUN_PY, "release"], env=env, check=True, capture_output=True, timeout=30
        )
    assert (tmp_path / "x.db").exists()


def test_the_port_flag_overrides_the_environment(tmp_path: Path) -> None:
    runner = RunPy(tmp_path / "data", free_port(), PORT="1")
    try:
        runner.start()
        # Served on the flag's port (healthy once the worker has reported, which may lag the URL).
        wait_until(lambda: httpx.get(f"{runner.url}/healthz", timeout=10).status_code == 200, timeout_s=30)
    finally:
        runner.stop()


def test_web_concurrency_starts_several_web_processes_on_one_port(tmp_path: Path) -> None:
    runner = RunPy(tmp_path / "data", free_port(), WEB_CONCURRENCY="2")
    try:
        runner.start()
        webs = [pid for pid in runner.descendants() if b"web" in cmdline(pid)[2:3]]
        assert len(webs) == 2
        with httpx.Client(base_url=runner.url, timeout=10) as client:
            with connect(runner.url.replace("http", "ws") + "/ws") as ws:
                # Fresh connections land on either process; every one of them must work.
                for n in range(20):
                    with httpx.Client(base_url=runner.url, timeout=10) as fresh:
                        assert send(fresh, n).status_code == 202
                received = [json.loads(ws.recv(timeout=10))["data"]["payload"] for _ in range(20)]
            assert received == list(range(20))
            assert [row["payload"] for row in wait_stored(client, 20)] == list(range(20))
        assert runner.interrupt() < 5
        assert not [pid for pid in webs if alive(pid)]
    finally:
        runner.stop()


# A busy port (SPEC §6) ---------------------------------------------------------------------
def _holder(port: int, *, reuseport: bool) -> socket.socket:
    """Another server on ``port``: it accepts connections and never answers."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:  # as `hypercorn -w 2` or another run.py with WEB_CONCURRENCY > 1 do
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "reuseport"])
@pytest.mark.parametrize("command", [[], ["web"]], ids=["run", "web"])
def test_a_busy_port_stops_at_once_with_one_line(tmp_path: Path, command: list[str], reuseport: bool) -> None:
    port, mark = free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_TEST_MARK": mark,
        # The web process must not even try its Redis: nothing answers here.
        "REDIS_URL": "redis://127.0.0.1:9/0" if command else "",
        "WEB_CONCURRENCY": "2" if reuseport else "1",
    }
    if not command:
        env.pop("REDIS_URL")
    with _holder(port, reuseport=reuseport):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, RUN_PY, *command, "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        took = time.monotonic() - started
        assert result.returncode != 0
        assert "running" not in result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], result.stderr
        assert took < 5, f"took {took:.1f}s"
        assert not (tmp_path / "data" / "appendonlydir").exists()  # no Redis was started
        wait_until(lambda: not marked_processes(mark), timeout_s=5)


def test_a_second_run_py_on_a_port_in_use_is_refused_and_the_first_keeps_it(tmp_path: Path) -> None:
    """The case as it was found: two run.py (other data folders) on one port, with several web
    processes each (SO_REUSEPORT). The second stops at once; nothing of it is left running."""
    first = RunPy(tmp_path / "a", free_port(), WEB_CONCURRENCY="2")
    mark = uuid.uuid4().hex
    try:
        first.start()
        env = {**first.env, "DATA_DIR": str(tmp_path / "b"), "PIPELINE_TEST_MARK": mark}
        second = subprocess.run(
            [sys.executable, RUN_PY, "--port", str(first.port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0 and "running" not in second.stdout
        assert str(first.port) in second.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "b" / "appendonlydir").exists()  # no Redis was started
        wait_until(lambda: not marked_processes(mark), timeout_s=5)
        assert httpx.get(f"{first.url}/healthz", timeout=10).status_code == 200
    finally:
        first.stop()


def test_a_stray_server_sharing_the_port_gets_no_connection(tmp_path: Path) -> None:
    """With WEB_CONCURRENCY > 1 run.py's web processes share the port (SO_REUSEPORT). Another
    server of the same user may join such a port; it must not silently take connections."""
    runner = RunPy(tmp_path / "data", free_port(), WEB_CONCURRENCY="2")
    try:
        runner.start()
        with _holder(runner.port, reuseport=True) as stray:
            stray.setblocking(False)
            for _ in range(40):
                with httpx.Client(base_url=runner.url, timeout=10) as fresh:
                    assert fresh.get("/healthz").status_code == 200
            with pytest.raises(BlockingIOError):
                stray.accept()
    finally:
        runner.stop()


# Nothing left behind, whatever stops run.py ------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_run_py_leaves_nothing_running(run_py: RunPy, sig: int) -> None:
    run_py.start()
    children = run_py.descendants()
    assert len(children) >= 3  # Redis, web, worker
    assert run_py.process is not None
    run_py.process.send_signal(sig)
    run_py.process.wait(10)
    if sig == signal.SIGTERM:
        assert run_py.process.returncode == 0
    wait_until(lambda: not [pid for pid in children if alive(pid)], timeout_s=8)


def _start_marked(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """``python run.py`` whose processes carry a mark (see marked_processes), output piped."""
    mark = uuid.uuid4().hex
    runner = RunPy(tmp_path / "data", free_port(), PIPELINE_TEST_MARK=mark)
    process = subprocess.Popen(
        [sys.executable, RUN_PY, "--port", str(runner.port)],
        env=runner.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, mark


def _read_until(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if text in line:
            return
    raise AssertionError(f"run.py exited before saying {text!r}")


# Redis runs, nothing else yet; the tables are ready and the web and worker are being started.
@pytest.mark.parametrize(
    "moment", ["private Redis at", "tables ready"], ids=["redis-started", "children-starting"]
)
def test_run_py_killed_while_starting_leaves_nothing_running(tmp_path: Path, moment: str) -> None:
    process, mark = _start_marked(tmp_path)
    with process:
        _read_until(process, moment)
        started = descendants(process.pid)
        process.kill()
        process.wait(10)
    assert started  # Redis at least
    wait_until(lambda: not marked_processes(mark) and not [p for p in started if alive(p)], timeout_s=8)


def test_sigterm_while_run_py_starts_stops_it_there(tmp_path: Path) -> None:
    process, mark = _start_marked(tmp_path)
    with process:
        _read_until(process, "private Redis at")  # the worker and web are not started yet
        started = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        rest = process.stdout.read()
        process.wait(10)
    assert "Pipeline running" not in rest, rest
    assert process.returncode == 0
    wait_until(lambda: not marked_processes(mark) and not [p for p in started if alive(p)], timeout_s=8)


def test_a_web_process_stops_at_once_on_sigterm_while_it_waits_for_its_database(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "DATABASE_URL": "postgresql://127.0.0.1:9/nothing_listens_here",
    }
    process = subprocess.Popen(
        [sys.executable, RUN_PY, "web", "--port", str(free_port())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with process:
        assert process.stderr is not None
        try:
            for line in process.stderr:  # it retries its database for up to 30 s
                if "waiting for the database" in line:
                    break
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            process.wait(10)
            assert time.monotonic() - started < 2
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


# Data files readable by their owner only (SPEC §8) ----------------------------------------
def _loose(directory: Path) -> list[str]:
    """Files and folders under ``directory`` (itself too) that group or others may use."""
    found = []
    for path in [directory, *directory.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue  # gone since it was listed (Redis's temporary rewrite files come and go)
        if mode & 0o077:
            found.append(f"{path} {stat.filemode(mode)}")
    return found


def test_data_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # what a user's shell usually has
    try:
        runner = RunPy(tmp_path / "data", free_port())
        try:
            runner.start()
            with httpx.Client(base_url=runner.url, timeout=10) as client:
                assert send(client, {"private": True}).status_code == 202
                wait_stored(client, 1)
            assert (runner.data_dir / "pipeline.db-wal").exists()
            # Files Redis makes later (rewriting its append-only file) are private too.
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(runner.data_dir / "redis.sock"))
                sock.sendall(b"BGREWRITEAOF\r\n")
                assert sock.recv(100).startswith(b"+")
            wait_until(lambda: list(runner.data_dir.glob("appendonlydir/appendonly.aof.2.*")))
            assert not _loose(runner.data_dir)
        finally:
            runner.stop()
        assert not _loose(runner.data_dir)
    finally:
        os.umask(old_umask)


def test_files_left_readable_by_an_older_version_are_narrowed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "pipeline.db").touch(mode=0o644)
    (data / "pipeline.db").chmod(0o644)
    runner = RunPy(data, free_port())
    try:
        runner.start()
        assert not _loose(data)
    finally:
        runner.stop()


def test_the_procfile_processes_keep_a_sqlite_file_private(tmp_path: Path, redis_server: RedisServer) -> None:
    old_umask = os.umask(0o022)
    try:
        folder = tmp_path / "db"
        folder.mkdir(mode=0o700)
        pipeline = Pipeline(tmp_path / "logs", redis_server.url, f"sqlite:///{folder / 'pipeline.db'}")
        try:
            pipeline.release()
            assert (folder / "pipeline.db").exists() and not _loose(folder)
            url = pipeline.start_web()
            pipeline.start_worker()
            with httpx.Client(base_url=url, timeout=10) as client:
                assert send(client, 1).status_code == 202
                wait_stored(client, 1)
            assert (folder / "pipeline.db-wal").exists()
            assert not _loose(folder)
        finally:
            pipeline.stop()
    finally:
        os.umask(old_umask)
