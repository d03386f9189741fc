"""Channels (SPEC §9) over real HTTP, WebSocket and SSE, and the schema migration that brings
them to a database written by the version before channels."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg2
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pipeline.schema import LATEST_VERSION
from tests.support import (
    RUN_PY,
    Pipeline,
    RedisServer,
    SSEReader,
    procfile_scaled_out,
    stored,
    wait_stored,
    wait_until,
)

RULE_WORDS = "1 to 64 characters"


def put(client: httpx.Client, channel: str | None, document: Any) -> httpx.Response:
    path = "/messages" if channel is None else f"/channels/{channel}/messages"
    return client.put(path, content=json.dumps(document))


def raw(url: str, method: str, target: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """One request with the target exactly as given (httpx would normalise ``..`` and ``%2F``)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, target, body=body)
        response = connection.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        connection.close()


# Names that may not name a channel, as they appear in a URL (percent-encoded where needed).
INVALID_NAMES = {
    "empty": "",
    "65 characters": "a" * 65,
    "leading dot": ".hidden",
    "leading dash": "-x",
    "leading underscore": "_x",
    "space": "a%20b",
    "plus (a space in a query)": "a+b",
    "unicode letter": quote("café"),
    "unicode digit": quote("١٢٣"),
    "encoded slash": "a%2Fb",
    "dot": ".",
    "dot dot": "..",
    "colon": "a:b",
    "at": "a@b",
    "tilde": "a~b",
    "NUL": "a%00",
    "newline": "a%0A",
    "tab": "%09a",
    "percent garbage": "a%ZZ",
    "quote": "a%22b",
    "backslash": "a%5Cb",
}
# A path segment that cannot name a route at all may be 404 (SPEC §9).
MAY_BE_404 = {"empty", "encoded slash", "dot", "dot dot"}
VALID_NAMES = ["a", "Z", "0", "9lives", "A" * 64, "orders", "Orders", "a.b_c-d", "v1.2.3", "x--__..y"]


def test_invalid_names_are_400_naming_the_rule(client: httpx.Client) -> None:
    url = str(client.base_url).rstrip("/")
    ws = url.replace("http://", "ws://")
    seen = []
    for label, name in INVALID_NAMES.items():
        for method, target in [
            ("PUT", f"/channels/{name}/messages"),
            ("POST", f"/channels/{name}/messages"),
            ("GET", f"/channels/{name}/messages"),
        ]:
            status, content_type, body = raw(url, method, target, b"{}" if method != "GET" else None)
            assert content_type == "application/problem+json", (label, target, body)
            allowed = {400, 404} if label in MAY_BE_404 else {400}
            assert status in allowed, (label, method, target, status, body)
            if status == 400:
                assert RULE_WORDS in json.loads(body)["detail"], body
            seen.append(status)
        # In query strings every one of them is a 400, the empty name included.
        for target in [
            f"/messages?channel={name}",
            f"/messages?channel=ok&channel={name}",
            f"/events?channel={name}",
            f"/events?after=0&channel=ok&channel={name}",
        ]:
            status, content_type, body = raw(url, "GET", target)
            assert (status, content_type) == (400, "application/problem+json"), (label, target, body)
            assert RULE_WORDS in json.loads(body)["detail"]
        with pytest.raises(InvalidStatus) as refused, connect(f"{ws}/ws?channel={name}"):
            pass
        assert refused.value.response.status_code == 400, label
        assert RULE_WORDS.encode() in refused.value.response.body
    assert stored(client) == []  # nothing was queued by any of them
    assert client.get("/channels").json() == []


def test_valid_names_are_case_sensitive_channels(client: httpx.Client) -> None:
    acks = {}
    for name in VALID_NAMES:
        response = put(client, name, {"to": name})
        assert response.status_code == 202, (name, response.text)
        acks[name] = response.json()["id"]
        assert response.headers["location"] == f"/messages/{acks[name]}"
    wait_stored(client, len(VALID_NAMES))
    for name in VALID_NAMES:
        rows = client.get(f"/channels/{name}/messages").json()
        assert [(row["channel"], row["payload"]) for row in rows] == [(name, {"to": name})]
        one = client.get(f"/messages/{acks[name]}").json()  # found whatever its channel
        assert one["channel"] == name
    assert sorted(stats["name"] for stats in client.get("/channels").json()) == sorted(VALID_NAMES)


def test_writes_reads_and_channel_figures(client: httpx.Client) -> None:
    # The routes from before channels write to "default".
    put(client, None, "plain")
    client.post("/json_dummy", content='"seed"')
    client.put("/json_dummy/", content='"seed slash"')
    for n in range(5):
        put(client, "orders", {"order": n})
        put(client, "Orders", {"Order": n})
    put(client, "iot", "sensor")
    rows = wait_stored(client, 14)
    assert [list(row)[:3] for row in rows] == [["id", "seq", "channel"]] * 14
    by_channel: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_channel.setdefault(row["channel"], []).append(row)
    assert [row["payload"] for row in by_channel["default"]] == ["plain", "seed", "seed slash"]
    assert [row["payload"] for row in by_channel["orders"]] == [{"order": n} for n in range(5)]

    for name, expected in by_channel.items():
        assert client.get(f"/channels/{name}/messages").json() == expected
        assert client.get("/messages", params={"channel": name}).json() == expected
    both = client.get("/messages", params=[("channel", "orders"), ("channel", "iot")]).json()
    assert both == [row for row in rows if row["channel"] in ("orders", "iot")]
    assert client.get("/channels/nothing-here/messages").json() == []
    assert client.get("/messages", params={"channel": "nothing-here"}).json() == []

    figures = client.get("/channels").json()
    assert figures == [
        {
            "name": name,
            "count": len(by_channel[name]),
            "latest_seq": by_channel[name][-1]["seq"],
            "latest_at": by_channel[name][-1]["received_at"],
        }
        for name in sorted(by_channel)
    ]


def test_before_after_limit_and_tail_per_channel(client: httpx.Client) -> None:
    for n in range(30):
        put(client, "even" if n % 2 == 0 else "odd", n)
    rows = wait_stored(client, 30)
    seqs = [row["seq"] for row in rows]
    even = [row["seq"] for row in rows if row["channel"] == "even"]

    def seqs_of(path: str, **params: Any) -> list[int]:
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        return [row["seq"] for row in response.json()]

    # ?before=<seq> with limit: the limit messages just below seq, ascending.
    assert seqs_of("/messages", before=seqs[20], limit=5) == seqs[15:20]
    assert seqs_of("/messages", before=seqs[3], limit=10) == seqs[:3]
    assert seqs_of("/messages", before=seqs[20]) == seqs[:20]
    assert seqs_of("/messages", before=seqs[20], after=seqs[10]) == seqs[11:20]
    assert seqs_of("/channels/even/messages", before=even[10], limit=3) == even[7:10]
    assert (
        seqs_of("/messages", channel="even", before=seqs[20], limit=3)
        == [s for s in even if s < seqs[20]][-3:]
    )
    # Paging backwards reaches everything, once.
    pages: list[int] = []
    before = seqs[-1] + 1
    while page := seqs_of("/channels/even/messages", before=before, limit=4):
        pages = page + pages
        before = page[0]
    assert pages == even
    # ?tail=n: the newest n; with after, the newest n of those after it.
    assert seqs_of("/messages", tail=4) == seqs[-4:]
    assert seqs_of("/channels/even/messages", tail=2) == even[-2:]
    assert seqs_of("/messages", tail=100, after=seqs[25]) == seqs[26:]
    assert seqs_of("/channels/even/messages", tail=3, after=even[-5]) == even[-3:]
    assert seqs_of("/channels/even/messages", after=even[3], limit=2) == even[4:6]
    assert seqs_of("/messages", before=0, limit=5) == seqs_of("/messages", before=1) == []
    for bad in ({"before": "x"}, {"before": "-1"}, {"before": "1.5"}):
        assert client.get("/channels/even/messages", params=bad).status_code == 400


# --- live streams --------------------------------------------------------------------------


class ChannelFollower(threading.Thread):
    """Follows ``/ws`` or ``/events`` narrowed to ``channels`` (None: all) like the page does,
    resuming with the last ``seq`` it saw; after every ``hop_every`` messages it drops the
    connection itself and resumes on the next web process in ``urls``."""

    def __init__(
        self,
        urls: list[str],
        transport: str,
        channels: list[str] | None,
        *,
        hop_every: int = 0,
        after: int | None = 0,
    ) -> None:
        super().__init__(daemon=True)
        self.urls, self.transport, self.channels = urls, transport, channels
        self.hop_every = hop_every
        self.last_seq = after
        self.received: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.connections = 0
        self.connected = threading.Event()
        self._stop_event = threading.Event()

    def _query(self, with_after: bool = True) -> str:
        params = [("channel", name) for name in self.channels or []]
        if with_after and self.last_seq is not None:
            params.append(("after", str(self.last_seq)))
        return "?" + "&".join(f"{k}={v}" for k, v in params) if params else ""

    def run(self) -> None:
        while not self._stop_event.is_set():
            url = self.urls[self.connections % len(self.urls)]
            self.connections += 1
            with contextlib.suppress(Exception):
                (self._ws if self.transport == "ws" else self._sse)(url)
            self._stop_event.wait(0.05)

    def _hop_due(self, count_at_connect: int) -> bool:
        return self.hop_every > 0 and len(self.received) - count_at_connect >= self.hop_every

    def _ws(self, url: str) -> None:
        start = len(self.received)
        # max_queue=None: with a bounded queue, websockets stops reading the socket while frames
        # wait unread, and closing then hangs waiting for a close frame it never reads.
        target = url.replace("http://", "ws://") + "/ws" + self._query()
        with connect(target, open_timeout=5, max_queue=None) as ws:
            self.connected.set()
            while not self._stop_event.is_set() and not self._hop_due(start):
                try:
                    frame = json.loads(ws.recv(timeout=0.2))
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return
                if frame["event"] == "message":
                    self._record(frame["data"])

    def _sse(self, url: str) -> None:
        start = len(self.received)
        # SSE resumes with Last-Event-ID, as EventSource does.
        headers = {} if self.last_seq is None else {"Last-Event-ID": str(self.last_seq)}
        with (
            httpx.Client(timeout=httpx.Timeout(5, read=0.5)) as client,
            client.stream(
                "GET", url + "/events" + self._query(with_after=False), headers=headers
            ) as response,
        ):
            assert response.status_code == 200
            self.connected.set()
            data: list[str] = []
            lines = response.iter_lines()
            while not self._stop_event.is_set() and not self._hop_due(start):
                try:
                    line = next(lines)
                except httpx.ReadTimeout:
                    continue
                except StopIteration:
                    return
                if line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    self._record(json.loads("\n".join(data)))
                    data = []

    def _record(self, message: dict[str, Any]) -> None:
        if self.last_seq is not None and message["seq"] <= self.last_seq:
            self.violations.append(f"seq {message['seq']} after {self.last_seq}")
        if self.channels is not None and message["channel"] not in self.channels:
            self.violations.append(f"seq {message['seq']} of channel {message['channel']}")
        self.last_seq = message["seq"]
        self.received.append(message)

    def expect(self, rows: list[dict[str, Any]]) -> list[str]:
        """The ids this follower must end with, in order."""
        return [row["id"] for row in rows if self.channels is None or row["channel"] in self.channels]

    def wait_for(self, ids: list[str], timeout_s: float = 40) -> None:
        wanted = set(ids)
        try:
            wait_until(lambda: wanted <= {m["id"] for m in self.received}, timeout_s, interval_s=0.1)
        except AssertionError:
            got = {m["id"] for m in self.received}
            missing = [i for i in ids if i not in got]
            raise AssertionError(
                f"{self.transport} {self.channels}: {len(missing)} of {len(ids)} missing (first "
                f"{missing[:3]}), received {len(self.received)}, last_seq {self.last_seq}, "
                f"connections {self.connections}, alive {self.is_alive()}"
            ) from None
        time.sleep(0.3)  # a duplicate right behind the last one would show now

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


class ChannelSender(threading.Thread):
    """PUTs documents to one channel (round-robin over web processes); keeps the accepted ids."""

    def __init__(self, urls: list[str], channel: str, count: int) -> None:
        super().__init__(daemon=True)
        self.urls, self.channel, self.count = urls, channel, count
        self.accepted: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=10) for url in self.urls]
        try:
            for n in range(self.count):
                response = put(clients[n % len(clients)], self.channel, {"c": self.channel, "n": n})
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                else:
                    self.errors.append(response.text)
                time.sleep(0.003)
        finally:
            for client in clients:
                client.close()


def _check_exactly_once(
    client: httpx.Client, senders: list[ChannelSender], followers: list[ChannelFollower]
) -> list[dict[str, Any]]:
    accepted = {i for sender in senders for i in sender.accepted}
    assert all(not sender.errors for sender in senders), [s.errors[:2] for s in senders]
    rows: list[dict[str, Any]] = wait_until(
        lambda: (r := stored(client)) and accepted <= {row["id"] for row in r} and r, timeout_s=40
    )
    assert len(rows) == len(accepted) == len({row["id"] for row in rows})
    for follower in followers:
        expected = follower.expect(rows)
        follower.wait_for(expected)
        assert follower.violations == [], follower.violations[:5]
        assert [m["id"] for m in follower.received] == expected, (follower.transport, follower.channels)
    # channel_stats agrees with what is stored.
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["channel"]] = counts.get(row["channel"], 0) + 1
    figures = {stats["name"]: stats for stats in client.get("/channels").json()}
    assert {name: stats["count"] for name, stats in figures.items()} == counts
    for name, stats in figures.items():
        newest = [row for row in rows if row["channel"] == name][-1]
        assert (stats["latest_seq"], stats["latest_at"]) == (newest["seq"], newest["received_at"])
    return rows


def _run_channels_load(webs: list[str], *, per_sender: int, hop_every: int) -> tuple[int, list[str]]:
    followers = [
        ChannelFollower(webs, "ws", ["alpha"], hop_every=hop_every),
        ChannelFollower(list(reversed(webs)), "sse", ["alpha"], hop_every=hop_every),
        ChannelFollower(webs, "ws", ["beta"]),
        ChannelFollower(list(reversed(webs)), "sse", ["beta"], hop_every=hop_every),
        ChannelFollower(webs, "ws", None, hop_every=hop_every),
        ChannelFollower(list(reversed(webs)), "sse", None),
        ChannelFollower(webs, "ws", ["alpha", "beta"], hop_every=hop_every),
        # A channel nobody writes to: it must receive nothing at all.
        ChannelFollower(webs, "sse", ["gamma"]),
    ]
    for follower in followers:
        follower.start()
        assert follower.connected.wait(10)
    senders = [
        ChannelSender(webs, "alpha", per_sender),
        ChannelSender(list(reversed(webs)), "alpha", per_sender),
        ChannelSender(webs, "beta", per_sender),
        ChannelSender(list(reversed(webs)), "beta", per_sender),
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    try:
        with httpx.Client(base_url=webs[0], timeout=10) as client:
            rows = _check_exactly_once(client, senders, followers)
        hops = [f.connections for f in followers]
        assert followers[-1].received == []
    finally:
        for follower in followers:
            follower.stop()
    return len(rows), [f"{f.transport}{f.channels}:{f.connections}" for f in followers] + [str(hops)]


def test_two_channels_written_concurrently_filtered_streams_exactly_once(pipeline: Pipeline) -> None:
    webs = [pipeline.start_web(), pipeline.start_web()]
    pipeline.start_worker()
    pipeline.start_worker()
    for web in webs:
        pipeline.wait_healthy(web)
    count, connections = _run_channels_load(webs, per_sender=80, hop_every=37)
    print(f"\n[channels, 2 web + 2 worker, sqlite] stored={count} connections={connections}")
    assert count == 320


def test_filtered_streams_replay_only_their_channels(client: httpx.Client) -> None:
    for n in range(6):
        put(client, "left" if n % 2 else "right", n)
    rows = wait_stored(client, 6)
    left = [row for row in rows if row["channel"] == "left"]
    url = str(client.base_url).rstrip("/")
    with connect(url.replace("http://", "ws://") + "/ws?channel=left&after=0") as ws:
        replayed = [json.loads(ws.recv(timeout=10))["data"] for _ in left]
        put(client, "right", "not for left")
        put(client, "left", "live")
        live = json.loads(ws.recv(timeout=10))["data"]
    assert replayed == left
    assert live["payload"] == "live" and live["channel"] == "left"
    reader = SSEReader(client, "/events?channel=left", headers={"Last-Event-ID": "0"})
    try:
        assert reader.messages(len(left) + 1) == [*left, live]
    finally:
        reader.close()


def test_filtered_live_stream_skips_other_channels(client: httpx.Client) -> None:
    url = str(client.base_url).rstrip("/")
    with connect(url.replace("http://", "ws://") + "/ws?channel=wanted") as ws:
        reader = SSEReader(client, "/events?channel=wanted")
        try:
            for n in range(5):
                put(client, "other", n)
            put(client, "wanted", "yes")
            frame = json.loads(ws.recv(timeout=10))
            assert (frame["event"], frame["data"]["payload"]) == ("message", "yes")
            assert reader.messages(1)[0]["payload"] == "yes"
        finally:
            reader.close()


# --- the Procfile scaled out, with filtered streams ------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_procfile_scaled_out_with_filtered_streams_on_postgres(
    redis_server: RedisServer, tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    database_url = postgres_database().replace("postgresql://", "postgres://")
    with procfile_scaled_out(redis_server.url, database_url, tmp_path / "honcho.log") as webs:
        count, connections = _run_channels_load(webs, per_sender=150, hop_every=53)
        print(f"\n[channels, Procfile 2 web + 2 worker, postgres] stored={count} connections={connections}")
        assert count == 600


# --- migrating a database written by the version before channels ----------------------------

# The schema exactly as the version before channels created it (peewee's DDL for its model).
V1_SQLITE = [
    'CREATE TABLE IF NOT EXISTS "message" ("seq" INTEGER NOT NULL PRIMARY KEY, "id" VARCHAR(36) NOT NULL, '
    '"payload" TEXT NOT NULL, "received_at" VARCHAR(27) NOT NULL, "persisted_at" VARCHAR(27) NOT NULL)',
    'CREATE UNIQUE INDEX IF NOT EXISTS "storedmessage_id" ON "message" ("id")',
]
V1_POSTGRES = [
    V1_SQLITE[0].replace('"seq" INTEGER NOT NULL', '"seq" BIGSERIAL NOT NULL'),
    V1_SQLITE[1],
]
V1_ROWS = 2500


class OldDatabase:
    """A database as the previous version left it: its schema, its rows, seq with holes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = not url.startswith("sqlite")

    def _connect(self) -> Any:
        if self.postgres:
            connection = psycopg2.connect(self.url)
            return connection
        return sqlite3.connect(self.url.removeprefix("sqlite:///"))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        connection = self._connect()
        try:
            cursor = connection.cursor()
            cursor.execute(sql)
            return list(cursor.fetchall())
        finally:
            connection.close()

    def create(self) -> list[tuple[Any, ...]]:
        connection = self._connect()
        cursor = connection.cursor()
        for sql in V1_POSTGRES if self.postgres else V1_SQLITE:
            cursor.execute(sql)
        p = "%s" if self.postgres else "?"
        rows = [
            (f"00000000-0000-4000-8000-{n:012d}", json.dumps({"old": n}), f"2026-11-27T20:{n // 60 % 60:02d}:"
             f"{n % 60:02d}.000000Z", "2026-11-27T21:00:00.000000Z")
            for n in range(V1_ROWS)
        ]  # fmt: skip
        cursor.executemany(
            f"INSERT INTO message (id, payload, received_at, persisted_at) VALUES ({p}, {p}, {p}, {p})", rows
        )
        # Holes, as a purge would leave (the newest row stays: it fixes the highest seq).
        cursor.execute("DELETE FROM message WHERE seq % 7 = 3")
        connection.commit()
        connection.close()
        return self.rows()

    def rows(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT seq, id, payload, received_at, persisted_at FROM message ORDER BY seq")

    def meta(self) -> dict[str, str]:
        return dict(self.query("SELECT key, value FROM pipeline_meta"))  # type: ignore[arg-type]


def _release(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, RUN_PY, "release"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_release_migrates_a_previous_version_database_several_at_once(
    database_url: str, tmp_path: Path
) -> None:
    old = OldDatabase(database_url)
    before = old.create()
    assert len(before) > 2000
    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path)}
    # Several processes migrating at the same moment: one does it, the others find it done.
    releases = [_release(env) for _ in range(4)]
    for process in releases:
        output = process.communicate(timeout=120)[0].decode()
        assert process.returncode == 0, output
    after = old.query("SELECT seq, id, payload, received_at, persisted_at, channel FROM message ORDER BY seq")
    assert [row[:5] for row in after] == before  # nothing lost, seq unchanged
    assert {row[5] for row in after} == {"default"}
    meta = old.meta()
    assert meta["schema_version"] == str(LATEST_VERSION) and len(meta["epoch"]) == 32
    stats = old.query("SELECT name, count, latest_seq, latest_at FROM channel_stats")
    assert stats == [("default", len(before), before[-1][0], before[-1][3])]

    # Idempotent: running it again changes nothing (not even the epoch).
    again = _release(env)
    output = again.communicate(timeout=60)[0].decode()
    assert again.returncode == 0, output
    assert old.meta() == meta
    assert old.query("SELECT name, count, latest_seq, latest_at FROM channel_stats") == stats
    assert old.query("SELECT COUNT(*) FROM message") == [(len(before),)]


def test_web_and_workers_migrate_at_start_then_serve_channels(
    database_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    old = OldDatabase(database_url)
    before = old.create()
    highest = before[-1][0]
    pipeline = Pipeline(tmp_path / "pipeline", redis_server.url, database_url)
    try:
        # No release step: two workers and a web process start together on the old database.
        pipeline.start_worker()
        pipeline.start_worker()
        url = pipeline.start_web()
        pipeline.wait_healthy(url)
        with httpx.Client(base_url=url, timeout=10) as client:
            listed = stored(client)
            assert [(m["seq"], m["id"], m["channel"]) for m in listed] == [
                (row[0], row[1], "default") for row in before
            ]
            assert client.get("/channels").json() == [
                {"name": "default", "count": len(before), "latest_seq": highest, "latest_at": before[-1][3]}
            ]
            put(client, "fresh", "new")
            put(client, None, "newer")
            rows = wait_stored(client, len(before) + 2)
            # Two workers: the two new messages may be stored in either order (FIFO is a one-worker promise).
            assert sorted((m["channel"], m["payload"]) for m in rows[-2:]) == [
                ("default", "newer"),
                ("fresh", "new"),
            ]
            assert min(m["seq"] for m in rows[-2:]) > highest
            figures = {stats["name"]: stats["count"] for stats in client.get("/channels").json()}
            assert figures == {"default": len(before) + 1, "fresh": 1}
        assert old.meta()["schema_version"] == str(LATEST_VERSION)
    finally:
        pipeline.stop()


def test_seq_is_never_reused_after_the_newest_rows_are_deleted(
    database_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    pipeline = Pipeline(tmp_path / "pipeline", redis_server.url, database_url)
    try:
        pipeline.release()
        url = pipeline.start_web()
        pipeline.start_worker()
        pipeline.wait_healthy(url)
        db = OldDatabase(database_url)
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(3):
                put(client, "c", n)
            rows = wait_stored(client, 3)
            connection = db._connect()
            connection.cursor().execute(f"DELETE FROM message WHERE seq >= {rows[1]['seq']}")
            connection.commit()
            connection.close()
            put(client, "c", "after the delete")
            newest = wait_until(lambda: (r := stored(client)) and len(r) == 2 and r[-1])
        assert newest["seq"] > rows[-1]["seq"]
    finally:
        pipeline.stop()


def test_read_and_ingest_tokens_cover_the_channel_routes(pipeline: Pipeline) -> None:
    url = pipeline.start_web(READ_TOKEN="reader-token", INGEST_TOKEN="writer-token")
    pipeline.start_worker()
    read = {"Authorization": "Bearer reader-token"}
    write = {"Authorization": "Bearer writer-token"}
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/channels/a/messages", content="1").status_code == 401
        assert client.post("/channels/a/messages", content="1", headers=read).status_code == 401
        assert client.put("/channels/a/messages", content="1", headers=write).status_code == 202
        for path in ["/channels", "/channels/a/messages", "/messages?channel=a", "/events?channel=a"]:
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["content-type"] == "application/problem+json"
            assert client.get(path, headers=write).status_code == 401, path
        wait_until(lambda: client.get("/channels", headers=read).json(), timeout_s=15)
        assert [row["payload"] for row in client.get("/channels/a/messages", headers=read).json()] == [1]
        with pytest.raises(InvalidStatus) as refused_ws, connect(url.replace("http", "ws") + "/ws?channel=a"):
            pass
        assert refused_ws.value.response.status_code == 401
