"""Bulk ingest (SPEC §12): newline-delimited JSON batches, all or nothing, through the real parts.

Each test drives a real web process and worker (and Redis, and SQLite) over HTTP and WebSocket;
counts come from what the service answers and stores.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.sync.client import connect as ws_connect

from tests.support import (
    Follower,
    Pipeline,
    RedisServer,
    SqliteLock,
    in_progress,
    metric_samples,
    stored,
    wait_stored,
    wait_until,
)

NDJSON = {"Content-Type": "application/x-ndjson"}


def post_batch(
    client: httpx.Client, lines: list[str] | bytes, path: str = "/messages", **headers: str
) -> httpx.Response:
    body = lines if isinstance(lines, bytes) else "\n".join(lines).encode()
    return client.post(path, content=body, headers={**NDJSON, **headers})


def post_until_accepted(client: httpx.Client, lines: list[str]) -> httpx.Response:
    """POST a batch as a well-behaved sender does: pushed back (503, storage behind), try again."""
    deadline = time.monotonic() + 30
    while True:
        response = post_batch(client, lines)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        assert response.json()["type"].endswith("/problems/queue-behind"), response.text
        time.sleep(0.1)


def batch_of(count: int, tag: str, size: int = 0) -> list[str]:
    pad = "x" * size
    return [json.dumps({"tag": tag, "n": n, "pad": pad}, separators=(",", ":")) for n in range(count)]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    return document


def assert_stored_in_line_order(rows: list[dict[str, Any]], ids: list[str], payloads: list[str]) -> None:
    """The batch's rows exist once each, in line order, with contiguous seqs and one commit."""
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(by_id), "a message stored twice"
    batch = [by_id[message_id] for message_id in ids]
    seqs = [row["seq"] for row in batch]
    assert seqs == list(range(seqs[0], seqs[0] + len(ids))), f"not contiguous in line order: {seqs[:20]}"
    assert [json.dumps(row["payload"], separators=(",", ":")) for row in batch] == [
        json.dumps(json.loads(text), separators=(",", ":")) for text in payloads
    ]
    # One transaction per batch: every row of it was persisted by the same commit.
    assert len({row["persisted_at"] for row in batch}) == 1, "the batch was stored in several commits"
    assert len({row["received_at"] for row in batch}) == 1


def test_a_batch_is_stored_in_line_order_each_an_ordinary_message(
    service: tuple[Pipeline, httpx.Client],
) -> None:
    _, client = service
    single = client.put("/messages", content=b'{"single":1}').json()["id"]
    wait_stored(client, 1)
    lines = [
        '{"a":1.0,"big":123456789012345678901234567890}',
        "",  # blank lines are skipped
        '"line\u2028with\u2029raw\u0085separators"',  # never ends a line
        "   ",
        "[1,2,3]\r",  # \r\n line end
        "null",
    ]
    response = client.put(
        "/channels/orders/messages",
        content="\n".join(lines).encode() + b"\r\n",
        headers={"Content-Type": "application/x-ndjson; charset=utf-8"},
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    assert set(answer) == {"ids", "status", "received_at"} and answer["status"] == "queued"
    ids = answer["ids"]
    assert len(ids) == 4 and len(set(ids)) == 4
    rows = wait_stored(client, 5)
    assert_stored_in_line_order(rows, ids, [line.rstrip("\r") for line in lines if line.strip()])
    texts = {row["id"]: row for row in rows}
    assert texts[ids[1]]["payload"] == "line\u2028with\u2029raw\u0085separators"
    assert all(
        texts[i]["channel"] == "orders" and texts[i]["received_at"] == answer["received_at"] for i in ids
    )
    assert texts[single]["seq"] < texts[ids[0]]["seq"]
    # The exact text is kept, as for single documents.
    raw = client.get(f"/messages/{ids[0]}")
    assert raw.status_code == 200 and '"payload":{"a":1.0,"big":123456789012345678901234567890}' in raw.text
    # Any other media type is one document, as before: two lines are not one JSON document.
    for content_type in ("application/json", "text/plain", "application/x-ndjson-not", "application/ndjson"):
        refused = client.post(
            "/messages", content=b'{"a":1}\n{"b":2}', headers={"Content-Type": content_type}
        )
        assert_problem(refused, 400)
    # The media type is case-insensitive, and a one-line batch is a batch.
    upper = client.post("/messages", content=b'{"u":1}', headers={"Content-Type": "Application/X-NDJSON"})
    assert upper.status_code == 202 and len(upper.json()["ids"]) == 1
    wait_stored(client, 6)


BAD_BATCHES = [
    pytest.param(b'{"ok":1}\n\n{"broken":\n{"ok":2}', 3, id="malformed-line-3-after-a-blank"),
    pytest.param(b'{"ok":1}\r\n{"ok":2}\r\n[NaN]\r\n', 3, id="nan-crlf"),
    pytest.param(b'1\n2\n3\n4\n{"x":Infinity}', 5, id="infinity"),
    pytest.param(b'{"ok":1}\n"\xff\xfe"', 2, id="invalid-utf8"),
    pytest.param(b'{"ok":1}\n{"ok":2}\n"\\ud800"', 3, id="lone-surrogate"),
    pytest.param(b'{"ok":1}\n' + b"[" * 2000 + b"]" * 2000, 2, id="too-deep"),
    pytest.param(b'{"ok":1}\n{"a":1} {"b":2}', 2, id="two-documents-on-one-line"),
    pytest.param(b'"line\xe2\x80\xa8\n{"ok":1}', 1, id="string-cut-at-a-newline"),
]


@pytest.mark.parametrize(("body", "line"), BAD_BATCHES)
def test_a_bad_line_is_400_naming_it_and_nothing_is_queued(
    service: tuple[Pipeline, httpx.Client], body: bytes, line: int
) -> None:
    _, client = service
    problem = assert_problem(post_batch(client, body), 400)
    assert problem["line"] == line, problem
    assert problem["detail"].startswith(f"Line {line}:"), problem
    # Nothing of it was queued: a later message is the only one stored.
    after = client.put("/messages", content=b'"after"').json()["id"]
    wait_until(lambda: client.get(f"/messages/{after}").status_code == 200, timeout_s=15)
    assert [row["id"] for row in stored(client)] == [after]


def test_batch_size_bounds(service: tuple[Pipeline, httpx.Client]) -> None:
    _, client = service
    # 1,001 documents: 413, whatever the blank lines; nothing queued.
    too_many = batch_of(1001, "too-many")
    assert_problem(post_batch(client, too_many), 413)
    assert_problem(post_batch(client, b"\n".join([b"1"] * 1001)), 413)
    # Over MAX_BODY_BYTES (1 MiB): 413 (on a connection of its own: the server may close it
    # rather than read a body it refused).
    with httpx.Client(base_url=str(client.base_url), timeout=10) as own:
        assert_problem(post_batch(own, batch_of(600, "too-big", size=2000)), 413)
    # Only blank lines: no documents.
    assert_problem(post_batch(client, b"\n\r\n  \n"), 400)
    # Exactly 1,000 with blank lines around them: accepted, stored in line order.
    lines = batch_of(1000, "full")
    response = post_batch(client, ["", *lines, "", ""])
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    rows = wait_stored(client, 1000)
    assert len(rows) == 1000
    assert_stored_in_line_order(rows, ids, lines)


def test_idempotency_key_covers_the_whole_batch(service: tuple[Pipeline, httpx.Client]) -> None:
    _, client = service
    lines = batch_of(50, "idem")
    first = post_batch(client, lines, **{"Idempotency-Key": "batch-1"})
    again = post_batch(client, lines, **{"Idempotency-Key": "batch-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()  # the first answer: same ids, same received_at
    # The same key with another body, or the same bytes as a single document, is a conflict.
    assert_problem(post_batch(client, batch_of(50, "other"), **{"Idempotency-Key": "batch-1"}), 422)
    one = client.post("/messages", content=lines[0].encode(), headers={"Idempotency-Key": "single-1"})
    assert one.status_code == 202
    assert_problem(post_batch(client, [lines[0]], **{"Idempotency-Key": "single-1"}), 422)
    rows = wait_stored(client, 51)
    time.sleep(1.0)  # a duplicate would come right after
    rows = stored(client)
    assert len(rows) == 51
    assert_stored_in_line_order(rows, first.json()["ids"], lines)


def test_get_by_id_says_queued_for_each_until_stored(pipeline: Pipeline) -> None:
    url = pipeline.start_web()
    with httpx.Client(base_url=url, timeout=10) as client:
        lines = batch_of(20, "queued")
        response = post_batch(client, lines)
        assert response.status_code == 202
        ids = response.json()["ids"]
        for message_id in ids:
            answer = client.get(f"/messages/{message_id}")
            assert answer.status_code == 202 and answer.json() == {"id": message_id, "status": "queued"}
        # Storage is behind (no worker: the batch has waited past 100 ms): another batch is
        # pushed back and queues nothing, rather than growing the queue.
        time.sleep(0.3)
        behind = post_batch(client, batch_of(20, "behind"))
        assert_problem(behind, 503)
        assert behind.json()["type"].endswith("/problems/queue-behind")
        assert behind.headers["Retry-After"] == "1"
        pipeline.start_worker()
        wait_until(lambda: all(client.get(f"/messages/{i}").status_code == 200 for i in ids), timeout_s=20)
        assert_stored_in_line_order(stored(client), ids, lines)
        assert len(stored(client)) == 20
        # Caught up: batches are accepted again.
        assert post_until_accepted(client, batch_of(5, "again")).status_code == 202
        wait_stored(client, 25)
    # Once committed, the batch's ids no longer count as queued documents.
    r = redis.Redis.from_url(pipeline.redis_url)
    try:
        wait_until(lambda: r.hlen("pipeline:batched") == 0 and r.zcard("arq:queue") == 0, timeout_s=10)
        assert int(r.get("pipeline:batched-extra") or 0) == 0
    finally:
        r.close()


def test_load_shedding_counts_a_batch_documents(pipeline: Pipeline) -> None:
    url = pipeline.start_web(MAX_QUEUE_DEPTH="150")  # and no worker: nothing leaves the queue
    with httpx.Client(base_url=url, timeout=10) as client:
        assert post_batch(client, batch_of(200, "deep")).status_code == 202
        time.sleep(1.5)  # the depth is read at most once a second
        # One job holding 200 documents is 200 queued messages, past MAX_QUEUE_DEPTH.
        refused = client.put("/messages", content=b'"one more"')
        assert_problem(refused, 503)
        assert refused.json()["type"].endswith("/problems/queue-full")


def test_concurrent_batches_each_stored_whole_and_in_line_order(
    service: tuple[Pipeline, httpx.Client],
) -> None:
    _, client = service
    sent: list[tuple[list[str], list[str]]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def sender(name: str) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as own:
            for round_ in range(10):
                lines = batch_of(100, f"{name}-{round_}")
                response = post_until_accepted(own, lines)
                with lock:
                    if response.status_code == 202:
                        sent.append((response.json()["ids"], lines))
                    else:
                        errors.append(response.text)

    threads = [threading.Thread(target=sender, args=(f"s{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    rows = wait_stored(client, 4000, timeout_s=30)
    assert len(rows) == 4000
    for ids, lines in sent:
        assert_stored_in_line_order(rows, ids, lines)


@pytest.mark.slow
def test_worker_killed_mid_batch_stores_every_document_once(
    service: tuple[Pipeline, httpx.Client], tmp_path: Path
) -> None:
    pipeline, client = service
    warm = post_batch(client, batch_of(3, "warm")).json()["ids"]
    wait_stored(client, 3)
    lock = SqliteLock(tmp_path / "pipeline.db")
    try:
        lines = batch_of(500, "killed")
        ids = post_batch(client, lines).json()["ids"]
        # Claimed and waiting on the write lock: provably mid-job when the worker dies.
        (claimed,) = wait_until(lambda: in_progress(pipeline.redis_url), timeout_s=10, interval_s=0.01)
        # Let it run into the lock (well within SQLite's 3 s busy timeout): past whatever a job
        # does before its transaction, and nothing committed.
        time.sleep(1.0)
        assert in_progress(pipeline.redis_url) == {claimed}
        pipeline.stop_workers(sig=signal.SIGKILL)
    finally:
        lock.release()
    assert claimed not in ids  # the batch's job, not one of its documents
    # No worker now: every document of the batch is still queued, none stored.
    for message_id in (ids[0], ids[250], ids[-1]):
        answer = client.get(f"/messages/{message_id}")
        assert answer.status_code == 202 and answer.json()["status"] == "queued", answer.text
    assert len(stored(client)) == 3
    pipeline.start_worker()
    rows = wait_stored(client, 503, timeout_s=30)
    time.sleep(1.0)
    rows = stored(client)
    assert len(rows) == 503
    assert_stored_in_line_order(rows, ids, lines)
    assert [row["id"] for row in rows[:3]] == warm


@pytest.mark.slow
def test_redis_paused_mid_enqueue_stores_nothing_of_the_batch(
    service: tuple[Pipeline, httpx.Client], redis_server: RedisServer
) -> None:
    _, client = service
    first = post_batch(client, batch_of(2, "before")).json()["ids"]
    wait_stored(client, 2)
    redis_server.pause()
    try:
        body = "\n".join(batch_of(100, "paused")).encode()
        response = client.post("/messages", content=body, headers=NDJSON, timeout=10)
        assert_problem(response, 503)
        assert response.elapsed.total_seconds() < 5
    finally:
        redis_server.resume()
    # The script Redis ran on resuming was past its deadline: no document of it is queued.
    resumed = post_batch(client, batch_of(2, "resumed")).json()["ids"]
    wait_until(lambda: client.get(f"/messages/{resumed[-1]}").status_code == 200, timeout_s=15)
    time.sleep(0.5)
    assert [row["id"] for row in stored(client)] == first + resumed


def test_a_batch_is_announced_in_one_notification(service: tuple[Pipeline, httpx.Client]) -> None:
    pipeline, client = service
    r = redis.Redis.from_url(pipeline.redis_url)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe("pipeline:messages")
        wait_until(lambda: r.pubsub_numsub("pipeline:messages")[0][1] >= 2, timeout_s=10)  # and the web's
        ids = post_batch(client, batch_of(100, "announced")).json()["ids"]
        notifications = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(n.count(b"\x1e") for n in notifications) < 100:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                notifications.append(message["data"])
        time.sleep(0.5)
        while (message := pubsub.get_message(timeout=0.1)) is not None:
            notifications.append(message["data"])
        # One RFC 7464 sequence holding the whole batch, in line order.
        assert len(notifications) == 1, f"{len(notifications)} notifications for one batch"
        records = [json.loads(text) for text in notifications[0].decode().split("\x1e") if text]
        assert [record["id"] for record in records] == ids
    finally:
        pubsub.close()
        r.close()


def _stream_counters(client: httpx.Client) -> tuple[float, float]:
    """(messages written to WebSocket streams, writes that carried them), from /metrics."""
    samples = metric_samples(client)
    label = '{transport="ws"}'
    return samples.get("pipeline_deliveries_total" + label, 0.0), samples.get(
        "pipeline_stream_writes_total" + label, 0.0
    )


def test_a_batch_reaches_each_live_stream_in_one_write(service: tuple[Pipeline, httpx.Client]) -> None:
    _, client = service
    url = str(client.base_url).replace("http://", "ws://").rstrip("/") + "/ws"
    with contextlib.ExitStack() as opened:
        streams = [opened.enter_context(ws_connect(url, open_timeout=10)) for _ in range(3)]
        # Every stream is live once it has received a message sent after it opened.
        client.put("/messages", json={"warm": True}).raise_for_status()
        for ws in streams:
            assert json.loads(ws.recv(timeout=10))["data"]["payload"] == {"warm": True}
        wait_until(lambda: _stream_counters(client)[0] == 3, timeout_s=10)
        delivered_before, writes_before = _stream_counters(client)
        ids = post_batch(client, batch_of(100, "one-write")).json()["ids"]
        for ws in streams:
            frames = [json.loads(ws.recv(timeout=10)) for _ in ids]
            assert [frame["data"]["id"] for frame in frames] == ids
        wait_until(lambda: _stream_counters(client)[0] == delivered_before + 3 * len(ids), timeout_s=10)
        delivered, writes = _stream_counters(client)
        # One write per stream for the whole batch, not one per document.
        assert (delivered - delivered_before, writes - writes_before) == (3 * len(ids), 3)


def test_live_streams_get_each_batch_once_in_order_and_a_reading_client_is_not_closed(
    service: tuple[Pipeline, httpx.Client],
) -> None:
    _, client = service
    url = str(client.base_url)
    # From seq 0 (nothing stored yet), so a reconnect resumes rather than starts at "now".
    followers = [Follower(url, transport=transport, after=0) for transport in ("ws", "ws", "sse")]
    for follower in followers:
        follower.start()
        assert follower.connected.wait(10)
    time.sleep(0.3)
    # Two full batches of ~1 MiB (1,000 documents each) arrive at once: a client that keeps
    # reading holds both in its bound and is never closed as slow.
    lines_a, lines_b = batch_of(1000, "full-a", size=980), batch_of(1000, "full-b", size=980)
    assert len("\n".join(lines_a)) < 1024 * 1024
    results: list[httpx.Response] = []

    def send(lines: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=30) as own:
            results.append(post_until_accepted(own, lines))

    senders = [threading.Thread(target=send, args=(lines,)) for lines in (lines_a, lines_b)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(30)
    full = [i for response in results for i in response.json()["ids"]]
    for follower in followers:
        try:
            follower.wait_for(set(full), timeout_s=30)
        except AssertionError:
            raise AssertionError(
                f"{follower.transport}: {len(follower.received)} of {len(full)}, "
                f"closed {follower.close_codes}, {follower.violations[:3]} {[r.status_code for r in results]}"
            ) from None
    # Then smaller batches, one after another.
    small = [post_until_accepted(client, batch_of(100, f"small-{i}")) for i in range(5)]
    assert all(response.status_code == 202 for response in [*results, *small])
    expected = [i for response in [*results, *small] for i in response.json()["ids"]]
    rows = wait_stored(client, len(expected), timeout_s=30)
    order = [row["id"] for row in rows]
    for follower in followers:
        try:
            follower.wait_for(set(expected), timeout_s=30)
        except AssertionError:
            raise AssertionError(
                f"{follower.transport}: {len(follower.received)} of {len(expected)}, "
                f"closed {follower.close_codes}, {follower.violations[:3]}"
            ) from None
    for follower in followers:
        follower.stop()
        got = [message["id"] for message in follower.received]
        assert got == order, f"{follower.transport}: {len(got)} received, {len(order)} stored"
        assert follower.violations == []
        if follower.transport == "ws":
            # (The SSE follower reconnects on any read pause, so only WebSocket closes tell.)
            assert follower.close_codes == [], f"closed: {follower.close_codes}"
