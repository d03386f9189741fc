"""Retention and honest continuity (SPEC §10), over real HTTP, WebSocket and SSE.

Retention runs while messages keep arriving: a follower records every message as it is stored,
and snapshots of ``GET /channels/<name>/messages`` taken meanwhile must each hold a contiguous
run of the newest messages, never missing one newer than the bound.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import Pipeline, RedisServer, SSEReader, metric_samples, wait_until

KEEP = 40
# How long to wait for what a busy machine may take a while to do (not a promise being tested:
# within a minute of becoming due is, and the passes here run every 0.2 s).
WAIT_S = 30.0
FAST = {"RETENTION_INTERVAL_S": "0.2", "PING_INTERVAL_S": "0.3"}


def _start(pipeline: Pipeline, workers: int = 1) -> httpx.Client:
    url = pipeline.start_web()
    for _ in range(workers):
        pipeline.start_worker()
    pipeline.wait_healthy(url)
    return httpx.Client(base_url=url, timeout=10)


def _put(client: httpx.Client, channel: str, document: Any) -> str:
    response = client.put(f"/channels/{channel}/messages", content=json.dumps(document))
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _figures(client: httpx.Client) -> dict[str, int]:
    return {row["name"]: row["count"] for row in client.get("/channels").json()}


def _channel(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    response = client.get(f"/channels/{name}/messages")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


class Recorder(threading.Thread):
    """Follows ``/ws`` from the start and records every message (seq -> message)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url.replace("http://", "ws://") + "/ws"
        self.seen: dict[int, dict[str, Any]] = {}
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        with connect(self.url, open_timeout=5, max_queue=None) as ws:
            self.ready.set()
            while not self.stopping.is_set():
                try:
                    event = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    continue
                if event["event"] == "message":
                    self.seen[event["data"]["seq"]] = event["data"]


def _send_for(client: httpx.Client, seconds: float, channels: list[str]) -> list[str]:
    ids, deadline, number = [], time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        channel = channels[number % len(channels)]
        ids.append(_put(client, channel, {"n": number, "channel": channel}))
        number += 1
        time.sleep(0.004)
    return ids


def _sample_while(
    client: httpx.Client, channel: str, busy: threading.Thread, tail: int
) -> list[tuple[float, list[int]]]:
    # ?tail= reads in one snapshot (the newest seq and the rows), so each sample is the
    # channel's newest messages at one moment (a plain read takes the newest seq first, then
    # the rows: purges in between would show).
    samples = []
    while busy.is_alive():
        response = client.get(f"/channels/{channel}/messages", params={"tail": tail})
        assert response.status_code == 200, response.text
        rows = response.json()
        samples.append((time.time(), [row["seq"] for row in rows]))
        time.sleep(0.05)
    return samples


@pytest.mark.parametrize("workers", [1, 2])
def test_retention_by_count_while_messages_keep_arriving(
    tmp_path: Path, redis_server: RedisServer, database_url: str, workers: int
) -> None:
    if workers == 2 and database_url.startswith("sqlite"):
        pytest.skip("several workers is the Postgres deployment")
    pipeline = Pipeline(
        tmp_path / "p", redis_server.url, database_url, RETENTION_MAX_MESSAGES=str(KEEP), **FAST
    )
    try:
        with _start(pipeline, workers) as client:
            recorder = Recorder(str(client.base_url))
            recorder.start()
            assert recorder.ready.wait(5)
            sender = threading.Thread(target=_send_for, args=(client, 4.0, ["busy", "busy", "quiet"]))
            sender.start()
            samples = _sample_while(client, "busy", sender, 4 * KEEP)
            sender.join()
            total = len(_channel(client, "busy")) + len(_channel(client, "quiet"))
            wait_until(
                lambda: len(recorder.seen) >= 200 and _figures(client) == {"busy": KEEP, "quiet": KEEP},
                WAIT_S,
            )
            newest = client.get("/messages?tail=1").json()[0]["seq"]
            wait_until(lambda: max(recorder.seen) >= newest, WAIT_S)
            recorder.stopping.set()
            recorder.join(5)
            by_channel: dict[str, list[int]] = {}
            for seq in sorted(recorder.seen):
                by_channel.setdefault(recorder.seen[seq]["channel"], []).append(seq)
            assert total >= 2 * KEEP
            for name in ("busy", "quiet"):
                kept = [row["seq"] for row in _channel(client, name)]
                assert kept == by_channel[name][-KEEP:], name
                assert all(row["channel"] == name for row in _channel(client, name))
            # Meanwhile: every snapshot is a contiguous run of the newest, at least KEEP long.
            assert len(samples) > 10
            for _, seqs in samples:
                if not seqs:
                    continue
                known = [seq for seq in by_channel["busy"] if seq <= seqs[-1]]
                assert seqs == known[-len(seqs) :], "a message newer than the bound was deleted"
                assert len(seqs) >= min(KEEP, len(known))
            assert "retention deleted" in pipeline.logs()
            # Every message stored reached the recorder; all but the kept ones were purged.
            purged = len(recorder.seen) - 2 * KEEP
            wait_until(lambda: metric_samples(client).get("pipeline_messages_purged_total") == purged, WAIT_S)
    finally:
        pipeline.stop()


def test_retention_by_age_while_messages_keep_arriving(
    tmp_path: Path, redis_server: RedisServer, database_url: str
) -> None:
    max_age_s = 2.0
    pipeline = Pipeline(tmp_path / "p", redis_server.url, database_url, RETENTION_MAX_AGE="2s", **FAST)
    try:
        with _start(pipeline, 2 if database_url.startswith("postgres") else 1) as client:
            recorder = Recorder(str(client.base_url))
            recorder.start()
            assert recorder.ready.wait(5)
            for number in range(5):
                _put(client, "brief", {"n": number})
            sender = threading.Thread(target=_send_for, args=(client, 5.0, ["steady"]))
            sender.start()
            samples = _sample_while(client, "steady", sender, 5000)
            sender.join()
            # "brief" was written once, long enough ago: it is gone from GET /channels.
            assert "brief" not in _figures(client)
            steady = [seq for seq in sorted(recorder.seen) if recorder.seen[seq]["channel"] == "steady"]
            assert len(steady) > 100
            for taken_at, seqs in samples:
                stored_by_then = [seq for seq in steady if seqs and seq <= seqs[-1]]
                young = {
                    seq
                    for seq in stored_by_then
                    if _seconds(recorder.seen[seq]["received_at"]) > taken_at - max_age_s
                }
                assert young <= set(seqs), "a message younger than RETENTION_MAX_AGE was deleted"
            # Within RETENTION_MAX_AGE and a pass (plus slack for a busy machine) all are gone.
            wait_until(lambda: "steady" not in _figures(client), timeout_s=max_age_s + WAIT_S)
            assert _channel(client, "steady") == []
            recorder.stopping.set()
            recorder.join(5)
            # Everything is gone, the highest seq is not: a resume from it is no reset, and one
            # from below it is told of the gap, with nothing kept yet (null); then live.
            highest = max(recorder.seen)
            url = str(client.base_url).replace("http://", "ws://") + "/ws"
            with connect(f"{url}?after={highest}") as level, connect(f"{url}?after={highest - 3}") as behind:
                assert json.loads(behind.recv(timeout=10)) == {
                    "event": "gap",
                    "data": {"after": highest - 3, "next_seq": None},
                }
                _put(client, "steady", {"after": "all purged"})
                for ws in (level, behind):
                    event = json.loads(ws.recv(timeout=30))
                    while event["event"] == "ping":
                        event = json.loads(ws.recv(timeout=30))
                    assert event["event"] == "message" and event["data"]["seq"] > highest
    finally:
        pipeline.stop()


# Continuity ------------------------------------------------------------------------------


@pytest.fixture
def purged(tmp_path: Path, redis_server: RedisServer) -> Any:
    """A service keeping 5 per channel, after a: 20 then b: 3 then a: 2 more (a's oldest 17 purged)."""
    pipeline = Pipeline(
        tmp_path / "p",
        redis_server.url,
        f"sqlite:///{tmp_path / 'pipeline.db'}",
        RETENTION_MAX_MESSAGES="5",
        **FAST,
    )
    try:
        client = _start(pipeline)
        for number in range(20):
            _put(client, "a", {"a": number})
        wait_until(
            lambda: (
                _figures(client).get("a") == 5
                and client.get("/messages?channel=a&limit=1").json()[0]["seq"] == 16
            ),
            WAIT_S,
        )
        for number in range(3):
            _put(client, "b", {"b": number})
        for number in range(20, 22):
            _put(client, "a", {"a": number})
        wait_until(
            lambda: _figures(client) == {"a": 5, "b": 3} and len(client.get("/messages").json()) == 8, WAIT_S
        )
        yield pipeline, client, client.get("/messages").json()
        client.close()
    finally:
        pipeline.stop()


def _ws_events(client: httpx.Client, query: str, count: int) -> list[dict[str, Any]]:
    url = str(client.base_url).replace("http://", "ws://") + "/ws" + query
    events: list[dict[str, Any]] = []
    with connect(url, open_timeout=5) as ws:
        while len(events) < count:
            event = json.loads(ws.recv(timeout=30))
            if event["event"] != "ping":
                events.append(event)
    return events


def _sse_events(
    client: httpx.Client, query: str, count: int, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    reader = SSEReader(client, "/events" + query, headers)
    events: list[dict[str, Any]] = []
    try:
        while len(events) < count:
            event = reader.next_event()
            if "event" in event:
                events.append(
                    {"event": event["event"], "data": json.loads(event["data"]), "id": event.get("id")}
                )
    finally:
        reader.close()
    return events


def _both(client: httpx.Client, query: str, count: int) -> list[list[dict[str, Any]]]:
    ws = _ws_events(client, query, count)
    sse = [{"event": e["event"], "data": e["data"]} for e in _sse_events(client, query, count)]
    return [ws, sse]


def test_a_resume_across_purged_messages_is_told_of_the_gap_first(purged: Any) -> None:
    _, client, kept = purged
    kept_a = [m for m in kept if m["channel"] == "a"]
    kept_b = [m for m in kept if m["channel"] == "b"]
    # Unfiltered, from seq 3 (a's 4th, purged): gap to the first kept, then all kept in order.
    for events in _both(client, "?after=3", 1 + len(kept)):
        assert events[0] == {"event": "gap", "data": {"after": 3, "next_seq": kept[0]["seq"]}}
        assert [e["data"] for e in events[1:]] == kept
    # Filtered to a: a's own next kept message.
    for events in _both(client, "?after=3&channel=a", 1 + len(kept_a)):
        assert events[0] == {"event": "gap", "data": {"after": 3, "next_seq": kept_a[0]["seq"]}}
        assert [e["data"] for e in events[1:]] == kept_a
    # Filtered to b, whose messages were all kept: no gap, b's messages straight away.
    for events in _both(client, "?after=3&channel=b", len(kept_b)):
        assert [e["event"] for e in events] == ["message"] * len(kept_b)
        assert [e["data"] for e in events] == kept_b
    # From the first kept message on, nothing was purged after it: no gap.
    for events in _both(client, f"?after={kept[0]['seq']}", len(kept) - 1):
        assert [e["data"] for e in events] == kept[1:]
    # SSE's Last-Event-ID resumes like ?after=.
    events = _sse_events(client, "?channel=a", 2, {"Last-Event-ID": "0"})
    assert events[0]["event"] == "gap" and events[0]["data"] == {"after": 0, "next_seq": kept_a[0]["seq"]}
    assert events[1]["data"] == kept_a[0]


def test_a_channel_nothing_was_purged_from_gets_no_gap(purged: Any) -> None:
    _, client, kept = purged
    url = str(client.base_url).replace("http://", "ws://") + "/ws?after=2&channel=c"
    _put(client, "c", {"c": 0})
    wait_until(lambda: _figures(client).get("c") == 1, WAIT_S)
    # c: one message; keep 5, so nothing of c is purged: no gap. a's purges do not concern c.
    with connect(url, open_timeout=5) as ws:
        first = json.loads(ws.recv(timeout=30))
        assert first["event"] == "message" and first["data"]["channel"] == "c"


def test_reset_for_a_seq_above_the_highest_and_for_another_epoch(purged: Any) -> None:
    _, client, kept = purged
    epoch = client.get("/messages").headers["Pipeline-Epoch"]
    assert len(epoch) == 32
    highest = kept[-1]["seq"]
    for query in (f"?after={highest + 1}", f"?after=5&epoch={'0' * 32}", f"?epoch={'f' * 32}"):
        for events in _both(client, query, 2 + len(kept)):
            assert events[0] == {"event": "reset", "data": {"epoch": epoch}}, query
            # Everything from the start: a's start was purged, so a gap first.
            assert events[1] == {"event": "gap", "data": {"after": 0, "next_seq": kept[0]["seq"]}}, query
            assert [e["data"] for e in events[2:]] == kept, query
    # The right epoch and a seq the database has: an ordinary resume.
    events = _ws_events(client, f"?after={kept[-2]['seq']}&epoch={epoch}", 1)
    assert events == [{"event": "message", "data": kept[-1]}]
    # SSE's reset sets the last event id to 0, so a browser reconnecting after it starts over.
    sse = _sse_events(client, f"?after={highest + 100}", 1)
    assert sse[0]["event"] == "reset" and sse[0]["id"] == "0"


def test_epoch_in_pings_and_headers(purged: Any) -> None:
    _, client, kept = purged
    epoch = client.get("/messages").headers["Pipeline-Epoch"]
    assert client.get("/channels/a/messages").headers["Pipeline-Epoch"] == epoch
    assert (
        client.get("/messages", headers={"Accept": "application/x-ndjson"}).headers["Pipeline-Epoch"] == epoch
    )
    with client.stream("GET", "/events") as response:
        assert response.headers["Pipeline-Epoch"] == epoch
    url = str(client.base_url).replace("http://", "ws://") + "/ws"
    with connect(url, open_timeout=5) as ws:
        ping = json.loads(ws.recv(timeout=30))
    assert ping == {"event": "ping", "data": {"seq": kept[-1]["seq"], "epoch": epoch}}


def test_a_replaced_database_resets_a_resuming_client(tmp_path: Path, redis_server: RedisServer) -> None:
    database = tmp_path / "pipeline.db"
    pipeline = Pipeline(tmp_path / "p", redis_server.url, f"sqlite:///{database}", **FAST)
    try:
        with _start(pipeline) as client:
            for number in range(5):
                _put(client, "default", {"old": number})
            wait_until(lambda: len(client.get("/messages").json()) == 5, WAIT_S)
            old_epoch = client.get("/messages").headers["Pipeline-Epoch"]
        pipeline.stop()
        for path in tmp_path.glob("pipeline.db*"):
            path.unlink()
        with _start(pipeline) as client:
            new_epoch = client.get("/messages").headers["Pipeline-Epoch"]
            assert new_epoch != old_epoch
            for number in range(8):
                _put(client, "default", {"new": number})
            wait_until(lambda: len(client.get("/messages").json()) == 8, WAIT_S)
            fresh = client.get("/messages").json()
            # The client saw seq 3 of the old database: the new one has a seq 3 too, but not its.
            for events in _both(client, f"?after=3&epoch={old_epoch}", 1 + len(fresh)):
                assert events[0] == {"event": "reset", "data": {"epoch": new_epoch}}
                assert [e["data"] for e in events[1:]] == fresh
    finally:
        pipeline.stop()
