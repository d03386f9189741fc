"""``python run.py``: one command runs everything, Ctrl-C stops everything (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import RUN_PY, RunPy, alive, free_port, send, wait_stored

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
        assert httpx.get(f"{runner.url}/healthz", timeout=10).status_code == 200
    finally:
        runner.stop()


def test_web_concurrency_starts_several_web_processes_on_one_port(tmp_path: Path) -> None:
    runner = RunPy(tmp_path / "data", free_port(), WEB_CONCURRENCY="2")
    try:
        runner.start()
        webs = [pid for pid in runner.descendants() if _cmdline(pid)[-2:] == [b"web", b"--share-port"]]
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


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []
