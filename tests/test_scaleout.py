"""Scale-out: the Procfile's processes, several of each, on one Redis and one Postgres (SPEC §1, §4, §7)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support import (
    Follower,
    Pipeline,
    RedisServer,
    Sender,
    SSEReader,
    assert_stored_exactly_once,
    free_port,
    procfile_scaled_out,
    send,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.slow


class RestPoller(threading.Thread):
    """Reads ``GET /messages?after=<last seq>`` over and over, as an impatient client would.

    If a smaller ``seq`` could commit after a larger one was visible, this reader would skip it
    for good; so at the end, what it collected must be everything that was stored.
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._halt.is_set():
                after = self.seen[-1] if self.seen else 0
                self.seen += [row["seq"] for row in client.get("/messages", params={"after": after}).json()]
                time.sleep(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


@pytest.mark.postgres
def test_procfile_two_webs_two_workers_on_postgres(
    redis_server: RedisServer, tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    # Heroku hands out postgres:// URLs; they must work as they are.
    database_url = postgres_database().replace("postgresql://", "postgres://")
    with procfile_scaled_out(redis_server.url, database_url, tmp_path / "honcho.log") as webs:
        followers = [Follower(webs[0], transport="ws", after=0), Follower(webs[1], transport="sse", after=0)]
        poller = RestPoller(webs[1])
        for follower in followers:
            follower.start()
            assert follower.connected.wait(10)
        poller.start()
        senders = [Sender(webs, interval_s=0.002), Sender(list(reversed(webs)), interval_s=0.002)]
        for sender in senders:
            sender.start()
        time.sleep(4)
        # A busy machine accepts less in 4 s; keep sending until there is enough to count.
        wait_until(lambda: sum(len(sender.accepted) for sender in senders) > 300, timeout_s=60)
        for sender in senders:
            sender.stop()
        combined = Sender(webs)
        combined.accepted = [i for sender in senders for i in sender.accepted]
        with httpx.Client(base_url=webs[0], timeout=10) as client:
            rows = assert_stored_exactly_once(client, combined)
        stored_ids = [row["id"] for row in rows]
        for follower in followers:
            follower.wait_for(set(stored_ids))
            follower.stop()
            assert follower.violations == []
            assert [m["id"] for m in follower.received] == stored_ids
        wait_until(lambda: len(poller.seen) >= len(rows), timeout_s=10)
        poller.stop()
        assert poller.seen == [row["seq"] for row in rows]
        print(f"\n[2 web + 2 worker, postgres] accepted={len(combined.accepted)} stored={len(rows)}")
        assert len(rows) > 200


def test_rediss_with_a_self_signed_certificate(tmp_path: Path) -> None:
    certificate, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(certificate)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    from pipeline.local_redis import find_redis_server

    redis = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certificate), "--tls-key-file", str(key), "--tls-auth-clients", "no",
         "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    pipeline = Pipeline(
        tmp_path / "tls", f"rediss://127.0.0.1:{port}/0", f"sqlite:///{tmp_path / 'db.sqlite'}"
    )
    try:
        url = pipeline.start_web()
        pipeline.start_worker()
        pipeline.wait_healthy(url)
        with (
            httpx.Client(base_url=url, timeout=10) as client,
            connect(url.replace("http", "ws") + "/ws") as ws,
        ):
            ack = send(client, {"over": "tls"}).json()
            frame = json.loads(ws.recv(timeout=10))
        assert frame["data"]["id"] == ack["id"]
    finally:
        pipeline.stop()
        stop_process(redis)


def test_sigterm_closes_streams_and_stops_the_web_process(service: tuple[Pipeline, httpx.Client]) -> None:
    pipeline, client = service
    url = str(client.base_url).rstrip("/")
    ((web, _),) = pipeline.webs
    reader = SSEReader(client, "/events")
    with connect(url.replace("http", "ws") + "/ws") as ws:
        send(client, "before")
        assert json.loads(ws.recv(timeout=10))["data"]["payload"] == "before"
        assert reader.messages(1)[0]["payload"] == "before"
        started = time.monotonic()
        web.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    with pytest.raises(EOFError):
        reader.next_event()  # the SSE response ended cleanly
    reader.close()
    assert web.wait(10) == 0
    assert time.monotonic() - started < 5
    pipeline.webs = []
