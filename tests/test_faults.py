"""Guarantees under faults (SPEC §7): break something real, then count.

Each test keeps a sender running while it kills or stops a part, and checks that every message
that got a 202 is stored exactly once, nothing refused is stored, and live clients saw every
stored message once, in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.support import (
    RUN_PY,
    Follower,
    Gate,
    Pipeline,
    RedisServer,
    RunPy,
    Sender,
    SqliteLock,
    assert_stored_exactly_once,
    cmdline,
    count_rows,
    free_port,
    in_progress,
    metric_samples,
    pipelined,
    queued,
    send,
    stored,
    wait_until,
)

pytestmark = pytest.mark.slow


def report(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + " ".join(f"{key}={value}" for key, value in figures.items()))


def _claimed_while_locked(pipeline: Pipeline, database: Path, at_least: int) -> tuple[SqliteLock, set[str]]:
    """Hold the database's write lock until the worker has claimed ``at_least`` jobs: they are
    then provably mid-job (claimed, their rows waiting to commit), not done and not yet started."""

    def claimed() -> set[str] | None:
        ids = in_progress(pipeline.redis_url)
        return ids if len(ids) >= at_least else None

    lock = SqliteLock(database)
    try:
        # Whatever is claimed while the lock is held is not stored (a batch that waits past the
        # busy timeout, 3 s, is retried and its jobs leave this set), so these are mid-job now.
        ids: set[str] = wait_until(claimed, timeout_s=10.0, interval_s=0.01)
    except BaseException:
        lock.release()
        raise
    return lock, ids


def test_worker_killed_mid_load_loses_nothing(service: tuple[Pipeline, httpx.Client], tmp_path: Path) -> None:
    pipeline, client = service
    sender = Sender([str(client.base_url)], interval_s=0.004)
    sender.start()
    wait_until(lambda: len(sender.accepted) > 100, timeout_s=30)
    # Killed while a batch is committing: its jobs are claimed, their rows not yet stored.
    lock, claimed = _claimed_while_locked(pipeline, tmp_path / "pipeline.db", at_least=5)
    try:
        pipeline.stop_workers(sig=signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        lock.release()
    time.sleep(1.0)  # messages keep arriving with no worker at all
    pipeline.start_worker()
    time.sleep(1.0)
    sender.stop()
    rows = assert_stored_exactly_once(client, sender, timeout_s=20)
    recovered_s = time.monotonic() - killed_at
    assert claimed <= {row["id"] for row in rows}
    report(
        "worker kill -9",
        accepted=len(sender.accepted),
        killed_mid_job=len(claimed),
        stored=len(rows),
        recovered_s=f"{recovered_s:.1f}",
    )
    assert sender.refused == [] and len(sender.accepted) > 100
    # A killed worker's jobs come back once their in-progress key expires (6 s, worker.py).
    assert recovered_s < 15


def test_worker_sigterm_hands_back_its_jobs(service: tuple[Pipeline, httpx.Client], tmp_path: Path) -> None:
    pipeline, client = service
    sender = Sender([str(client.base_url)], interval_s=0.002)
    sender.start()
    time.sleep(1.0)
    (worker,) = pipeline.workers
    # SIGTERM while jobs are running (their rows wait on the lock): after its grace period (2 s)
    # the worker interrupts them, and must hand them back rather than drop them.
    lock, claimed = _claimed_while_locked(pipeline, tmp_path / "pipeline.db", at_least=5)
    try:
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        # Every job it held ends (interrupted, or retried after the lock's timeout) before any can
        # be stored: the lock is kept until then.
        wait_until(lambda: not in_progress(pipeline.redis_url), timeout_s=10, interval_s=0.02)
    finally:
        lock.release()
    worker.wait(10)
    assert worker.returncode == 0 and time.monotonic() - started < 5
    pipeline.workers = []
    pipeline.start_worker()
    time.sleep(0.5)
    sender.stop()
    rows = assert_stored_exactly_once(client, sender, timeout_s=20)
    assert claimed <= {row["id"] for row in rows}
    report("worker SIGTERM", accepted=len(sender.accepted), interrupted=len(claimed), stored=len(rows))


def test_a_job_run_twice_stores_one_row(service: tuple[Pipeline, httpx.Client], redis_server: RedisServer,
                                        tmp_path: Path) -> None:  # fmt: skip
    """A worker killed after its rows committed but before it told Redis: the jobs run again."""
    pipeline, client = service
    database = tmp_path / "pipeline.db"
    lock = SqliteLock(database)
    try:
        # All at once, so the worker claims them well within its busy timeout (3 s).
        ids = pipelined(str(client.base_url).rstrip("/"), [f'{{"twice": {n}}}' for n in range(20)])
        wait_until(lambda: set(ids) <= in_progress(pipeline.redis_url), timeout_s=2.5)
        # Redis stops: from now on the worker can store but can tell Redis nothing.
        redis_server.pause()
    finally:
        lock.release()
    try:
        wait_until(lambda: count_rows(database) == 20, timeout_s=5)
        pipeline.stop_workers(sig=signal.SIGKILL)
    finally:
        redis_server.resume()
    assert set(ids) <= in_progress(pipeline.redis_url)  # unacknowledged: they will run again
    pipeline.start_worker()
    later = [send(client, {"later": n}).json()["id"] for n in range(5)]
    # The jobs run again once their in-progress keys expire (6 s), alongside the later messages.
    wait_until(lambda: queued(pipeline.redis_url) == 0, timeout_s=20, interval_s=0.1)
    rows = stored(client)
    assert [row["id"] for row in rows] == ids + later
    health = client.get("/healthz").json()
    assert health["queue"]["failed"] == 0 and health["status"] == "ok"
    assert all(client.get(f"/messages/{i}").status_code == 200 for i in ids + later)


def test_everything_killed_at_once_then_restarted(tmp_path: Path) -> None:
    runner = RunPy(tmp_path / "data", free_port())
    try:
        runner.start()
        sender = Sender([runner.url], interval_s=0.003)
        sender.start()
        # Under load, wait for enough traffic rather than a fixed time.
        wait_until(lambda: len(sender.accepted) > 150, timeout_s=60, interval_s=0.05)
        assert runner.process is not None
        # The worker falls behind (stopped), so accepted jobs are waiting in Redis when it all dies:
        # they are only safe in Redis's append-only file.
        (worker,) = [pid for pid in runner.descendants() if cmdline(pid)[-1:] == [b"worker"]]
        os.kill(worker, signal.SIGSTOP)
        redis_url = f"unix://{runner.data_dir / 'redis.sock'}"
        wait_until(lambda: queued(redis_url) >= 30, timeout_s=30, interval_s=0.05)
        everyone = [runner.process.pid, *runner.descendants()]
        for pid in everyone:
            os.kill(pid, signal.SIGKILL)
        runner.process.wait(5)
        time.sleep(0.3)
        sender.stop()
        runner.start()
        with httpx.Client(base_url=runner.url, timeout=10) as client:
            rows = assert_stored_exactly_once(client, sender)
        report("kill -9 all", accepted=len(sender.accepted), stored=len(rows), unanswered=sender.unknown)
        assert len(sender.accepted) > 100
    finally:
        runner.stop()


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_redis_restart_under_load_with_live_clients(
    service: tuple[Pipeline, httpx.Client], redis_server: RedisServer, how: str
) -> None:
    pipeline, client = service
    url = str(client.base_url).rstrip("/")
    followers = [Follower(url, transport="ws", after=0), Follower(url, transport="sse", after=0)]
    for follower in followers:
        follower.start()
        follower.connected.wait(10)
    sender = Sender([url], interval_s=0.005)
    sender.start()
    time.sleep(1.0)
    if how == "kill":
        redis_server.kill()
    else:
        redis_server.stop()
    down_at = time.monotonic()
    time.sleep(1.5)
    refused_while_down = len(sender.refused)
    accepted_while_down = len(sender.accepted)
    redis_server.start()
    wait_until(lambda: len(sender.accepted) > accepted_while_down, timeout_s=15)
    back_s = time.monotonic() - down_at
    time.sleep(1.0)
    sender.stop()
    # Redis writes its append-only file before it answers, so even kill -9 keeps every job it
    # acknowledged (only a machine crash could lose the last second: appendfsync everysec).
    rows = assert_stored_exactly_once(client, sender)
    stored_ids = [row["id"] for row in rows]
    assert len(stored_ids) == len(set(stored_ids))
    assert refused_while_down > 0 and set(sender.refused) == {503}
    for follower in followers:
        follower.wait_for(set(stored_ids))
        follower.stop()
        assert follower.violations == []
        assert [m["id"] for m in follower.received] == stored_ids
    report(
        f"redis {how}",
        accepted=len(sender.accepted),
        refused_503=len(sender.refused),
        stored=len(rows),
        back_after_s=f"{back_s:.1f}",
    )


def test_database_locked_retries_then_gives_up_visibly(pipeline: Pipeline, tmp_path: Path) -> None:
    url = pipeline.start_web()
    pipeline.start_worker(STORE_MAX_TRIES="2", STORE_RETRY_BASE_S="0.1")
    pipeline.wait_healthy(url)
    database = tmp_path / "pipeline.db"
    with httpx.Client(base_url=url, timeout=10) as client:
        # A short lock: the store retries and succeeds.
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        first = send(client, "survives a short lock").json()["id"]
        time.sleep(1.0)
        lock.execute("COMMIT")
        wait_until(lambda: client.get(f"/messages/{first}").status_code == 200, timeout_s=15)

        # A long lock: both tries fail, and the message is recorded as failed, visibly.
        lock.execute("BEGIN EXCLUSIVE")
        second = send(client, "outlives its tries").json()["id"]
        failed = wait_until(
            lambda: (r := client.get(f"/messages/{second}")).json().get("status") == "failed" and r,
            timeout_s=30,
        )
        assert failed.status_code == 202 and "locked" in failed.json()["error"]
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and health["queue"]["failed"] == 1
        failed_metrics = ("pipeline_messages_failed_total", "pipeline_failed_messages")
        wait_until(lambda: [metric_samples(client).get(name) for name in failed_metrics] == [1.0, 1.0])
        lock.execute("COMMIT")
        lock.close()

        # The operator fixes the cause and queues it again: stored, once.
        subprocess.run([sys.executable, RUN_PY, "retry-failed"], env=pipeline.env, check=True, timeout=30)
        wait_until(lambda: client.get(f"/messages/{second}").status_code == 200, timeout_s=15)
        assert [row["id"] for row in stored(client)] == [first, second]
        assert client.get("/healthz").json()["status"] == "ok"
        # Nothing waits for retry-failed any more; the counter keeps what happened.
        wait_until(lambda: [metric_samples(client).get(name) for name in failed_metrics] == [1.0, 0.0])


@pytest.mark.postgres
def test_postgres_connections_lost_under_load(
    redis_server: RedisServer, tmp_path: Path, postgres_database
) -> None:  # type: ignore[no-untyped-def]
    import psycopg2

    database_url = postgres_database()
    pipeline = Pipeline(tmp_path / "pg", redis_server.url, database_url)
    try:
        pipeline.release()
        url = pipeline.start_web()
        pipeline.start_worker()
        pipeline.start_worker()
        pipeline.wait_healthy(url)
        follower = Follower(url, after=0)
        follower.start()
        follower.connected.wait(10)
        sender = Sender([url], interval_s=0.003)
        sender.start()
        name = database_url.rsplit("/", 1)[1]
        admin = psycopg2.connect(database_url.rsplit("/", 1)[0] + "/test")
        admin.autocommit = True
        terminated = 0
        for _ in range(4):
            time.sleep(0.7)
            with admin.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                terminated += cursor.fetchone()[0]
        admin.close()
        time.sleep(0.5)
        sender.stop()
        with httpx.Client(base_url=url, timeout=10) as client:
            rows = assert_stored_exactly_once(client, sender)
        follower.wait_for({row["id"] for row in rows})
        follower.stop()
        assert follower.violations == [] and [m["id"] for m in follower.received] == [r["id"] for r in rows]
        report(
            "postgres connections killed",
            terminated=terminated,
            accepted=len(sender.accepted),
            stored=len(rows),
        )
        assert terminated > 0
    finally:
        pipeline.stop()


def test_live_streams_across_a_lost_notification(
    pipeline: Pipeline, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Worker A stores a message, but its path to Redis stalls first, so the notification is lost;
    worker B then stores the next one. On SQLite too, every live stream shows both, in order, once:
    the hub reads the gap from the database before handing out past it, and a stream that replayed
    the first message from the database does not get it again from the hub."""
    database = tmp_path / "pipeline.db"
    gate = Gate(redis_server.port)
    gate.start()
    url = pipeline.start_web()
    pipeline.start_worker(REDIS_URL=gate.url)  # worker A: its path to Redis goes through the gate
    worker_b = pipeline.start_worker()
    pipeline.wait_healthy(url)
    follower = Follower(url, transport="ws", after=0)
    follower.start()
    assert follower.connected.wait(10)
    client = httpx.Client(base_url=url, timeout=10)
    try:

        def worker_a_is_serving(tag: object) -> None:
            """With B stopped, a message stored shows A connected through the gate again (after a
            round it reconnects; on a busy machine that took longer than a fixed pause)."""
            probe = send(client, {"round": tag, "probe": True}).json()["id"]
            wait_until(lambda: client.get(f"/messages/{probe}").status_code == 200, timeout_s=30)

        for round_ in range(3):
            with contextlib.ExitStack() as stack:
                stack.callback(gate.open)
                worker_b.send_signal(signal.SIGSTOP)  # only worker A can take the first message
                try:
                    worker_a_is_serving(round_)
                    previous = stored(client)[-1]["seq"]
                    lock = SqliteLock(database)
                    try:
                        first = send(client, {"round": round_, "by": "a"}).json()["id"]
                        wait_until(lambda: first in in_progress(pipeline.redis_url), timeout_s=10)  # noqa: B023
                        gate.shut()  # A has claimed it; whatever A tells Redis from now on is lost
                    finally:
                        lock.release()
                    wait_until(lambda: client.get(f"/messages/{first}").status_code == 200, timeout_s=5)  # noqa: B023
                    # Stored, and the hub has not heard of it: a stream resuming now replays it.
                    stream = stack.enter_context(
                        ws_connect(url.replace("http://", "ws://") + f"/ws?after={previous}", open_timeout=5)
                    )
                finally:
                    worker_b.send_signal(signal.SIGCONT)
                second = send(client, {"round": round_, "by": "b"}).json()["id"]
                follower.wait_for({first, second}, timeout_s=10)
                received: list[str] = []
                with contextlib.suppress(TimeoutError):
                    while len(received) < 3:
                        frame = json.loads(stream.recv(timeout=1.0))
                        if frame["event"] == "message":
                            received.append(frame["data"]["id"])
                assert received == [first, second]
        # A lost notification with nothing after it: the hub's periodic look at the database
        # (every 2 s) finds the message all the same.
        with contextlib.ExitStack() as stack:
            stack.callback(gate.open)
            worker_b.send_signal(signal.SIGSTOP)
            stack.callback(worker_b.send_signal, signal.SIGCONT)
            worker_a_is_serving("last")
            lock = SqliteLock(database)
            try:
                last = send(client, {"round": "last", "by": "a"}).json()["id"]
                wait_until(lambda: last in in_progress(pipeline.redis_url), timeout_s=10)
                gate.shut()
            finally:
                lock.release()
            follower.wait_for({last}, timeout_s=10)
        rows = stored(client)
        follower.stop()
        assert follower.violations == []
        assert [m["id"] for m in follower.received] == [row["id"] for row in rows]
        assert len(rows) == 7 + 4  # and the four probes
    finally:
        follower.stop()
        client.close()
        gate.close()
